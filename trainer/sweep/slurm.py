"""Before a `hydra/launcher=slurm` sweep submits anything: a request no node can satisfy fails at
once, and a cluster without accounting does not flood the console.

`before_submitting` is called by the launcher of our preset conf/hydra/launcher/slurm.yaml
(hydra_plugins/trainer_slurm_launcher: the submitit plugin's, checking first). Not a Hydra callback:
Hydra turns a callback's exception into a warning and goes on.
- SLURM keeps a job that asks more CPUs, memory or GPUs than any node has pending forever (`squeue`
  reason PartitionConfig), and the sweep waits with it. `sinfo` says what the nodes have: a request
  above it is refused in one line naming the launcher keys to lower.
- Without slurmdbd, `sacct` fails, and submitit logs "Bypassing sacct error" (and sacct its own
  "Slurm accounting storage is disabled") on every poll, every few seconds. There, the sweep skips
  sacct (submitit then knows a job is done from its result file) and says so once. A job cancelled
  by hand (scancel) is then not noticed, and the sweep waits.

A job SLURM requeues (a preemption, `scontrol requeue`) starts again in its own job dir and continues
from the checkpoint it finds there (trainer.resume.requeued); the summary counts it once.
"""

from __future__ import annotations

import logging
import re
import subprocess
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError

log = logging.getLogger(__name__)


def before_submitting(params: dict[str, Any]) -> None:
    """Refuse what no node can run (UserError: one line, exit 2); no sacct without accounting."""
    request = OmegaConf.create(params)
    nodes = node_sizes(request.get("partition"))
    if nodes:
        check_request(request, nodes)
    if not accounting():
        quiet_sacct()


def node_sizes(partition: Optional[str]) -> list[tuple[int, int, int]]:
    """(CPUs, memory MB, GPUs) of each node `sinfo` lists; [] when sinfo cannot tell (no check then)."""
    cmd = ["sinfo", "-h", "-o", "%c %m %G"] + (["-p", str(partition)] if partition else [])
    out = _run(cmd)
    nodes = []
    for line in (out or "").splitlines():
        cpus, mem, gres = (line.split(None, 2) + ["", "", ""])[:3]
        if cpus.isdigit() and mem.rstrip("+").isdigit():
            gpus = sum(int(n) for n in re.findall(r"gpu(?::[\w.-]+)*:(\d+)", gres))
            nodes.append((int(cpus), int(mem.rstrip("+")), gpus))
    return nodes


def check_request(launcher: DictConfig, nodes: list[tuple[int, int, int]]) -> None:
    """One line naming every key whose value no node reaches, with the most a node has."""
    asked = {"cpus_per_task": (launcher.get("cpus_per_task") or 0) * (launcher.get("tasks_per_node") or 1),
             "mem_gb": (launcher.get("mem_gb") or 0) * 1024, "gpus_per_node": launcher.get("gpus_per_node") or 0}
    most = {k: max(n[i] for n in nodes) for i, k in enumerate(asked)}
    if any(all(a <= n[i] for i, a in enumerate(asked.values())) for n in nodes):
        return
    where = f"partition {launcher.partition}" if launcher.get("partition") else "this cluster"
    unit = {"cpus_per_task": (1, "CPUs"), "mem_gb": (1024, "GB"), "gpus_per_node": (1, "GPUs")}
    over = [f"hydra.launcher.{k}={launcher.get(k)} (a node has at most {most[k] // unit[k][0]} {unit[k][1]})"
            for k in asked if asked[k] > most[k]] or [f"{k}={launcher.get(k)}" for k in asked]
    raise UserError(f"no node of {where} can run these jobs, which would wait forever: lower {', '.join(over)}")


def accounting() -> bool:
    """Whether sacct can answer (slurmdbd runs); assumed so when scontrol cannot tell."""
    out = _run(["scontrol", "show", "config"])
    return out is None or "accounting_storage/none" not in out


def quiet_sacct() -> None:
    """Skip submitit's sacct polls, which can only fail here; say once why jobs' states are not shown."""
    from submitit.slurm import slurm

    log.info("SLURM has no accounting (sacct): submitit follows the jobs by their result files")
    slurm.SlurmInfoWatcher._make_command = lambda self: None  # update() then polls nothing


def _run(cmd: list[str]) -> Optional[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
