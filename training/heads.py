"""Training-only heads on a NeMo model (the ASR's auxiliary CTC, the diarizer's voice head): load a plain
model's weights beside a fresh head, and give NeMo's own class back without the head for saving."""

from __future__ import annotations

from collections.abc import Iterable


def load_beside_fresh_head(wrapped, state: dict, head: str, what: str = "the model") -> None:
    """Load `state` (a plain model's weights) into `wrapped`, whose only weights beyond it are under `head`."""
    missing, unexpected = wrapped.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise ValueError(f"{what} does not fit the model: missing {missing}, unexpected {unexpected}")


def without_head(model, plain_class: type, head: str, config_keys: Iterable[str]):
    """`plain_class` (NeMo's) with `model`'s weights but those under `head`, its config without `config_keys`."""
    from omegaconf import open_dict

    cfg = model.cfg.copy()
    with open_dict(cfg):
        for key in config_keys:
            cfg.pop(key, None)
        # NeMo restores the class named here, and only classes of approved (NeMo) modules
        cfg.target = f"{plain_class.__module__}.{plain_class.__name__}"
    plain = plain_class(cfg=cfg)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(head)})
    return plain.eval()
