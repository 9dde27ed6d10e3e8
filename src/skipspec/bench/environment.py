"""Where and with what a benchmark ran, recorded next to its numbers."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU model string (Linux /proc/cpuinfo, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    """1/5/15-minute load: other processes on the machine make CPU timings noisy, so say how busy it was."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return None


def environment(model_ref: str, model: torch.nn.Module, device: torch.device, command: str) -> dict:
    import transformers

    from .. import SwiftConfig, __version__

    cfg = model.config
    return {
        "model": model_ref,
        "model_class": type(model).__name__,
        "num_layers": getattr(cfg, "num_hidden_layers", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "skipspec": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "load_average_start": load_average(),
        # What `swift` meant when this ran: the engine's default changes as the search evolves.
        "swift_default_config": repr(SwiftConfig()),
    }
