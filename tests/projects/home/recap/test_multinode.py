"""Multi-node rehearsal on one machine: two `recap train --nnodes 2 --nproc-per-node 1` launchers (torchrun agents)
meet at a c10d rendezvous on 127.0.0.1 and train with the large tables sharded over their two workers (gloo). After
the first checkpoint, node 1 is lost (its launcher and its worker SIGKILLed) and started again with the same command,
as a scheduler replaces a machine; the job restarts (--max-restarts 1), resumes from the checkpoint and finishes. It
runs twice: with the save_dir on a local directory both "nodes" see, and on an S3-protocol server (moto's, on
localhost), with no directory shared between them for the run. The command is the one docs/guides/clusters.md's
"Multi-node" section shows; the launcher options' validation is checked too."""

import argparse
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import train_helpers as helpers  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[3] / "core"))
from processes import children  # noqa: E402

from core.checkpoint import list_checkpoints  # noqa: E402
from core.distributed import Rendezvous, launcher_arguments  # noqa: E402
from core.storage import location  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[3]))
from s3_server import s3_server  # noqa: E402

# docs/guides/clusters.md shows this line; the test fills in FILE, HOST0:PORT and ID and adds its --set overrides.
COMMAND = ("recap train --config FILE --nnodes 2 --nproc-per-node 1 --rdzv-endpoint HOST0:PORT --rdzv-id ID "
           "--max-restarts 1")
STEPS = 40
EVERY = 5
TIMEOUT = 240.0


def _free_port() -> int:
    """A port free now, below Linux's ephemeral range (32768-60999): the ports that bind(0) and outgoing connections
    take (other tests' launchers, gloo) come from that range, so one of them cannot take this port between here and
    the launcher binding it. Node 0 is still restarted on a fresh port if the port was taken (_start_node0)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _node_command(data: Path, save_dir: Path | str, port: int) -> list[str]:
    filled = {"FILE": str(helpers.DEMO), "HOST0:PORT": f"127.0.0.1:{port}", "ID": "rehearsal"}
    argv = [filled.get(word, word) for word in COMMAND.split()]
    assert argv[:2] == ["recap", "train"]
    values = helpers.overrides(data, save_dir, STEPS, checkpoint_every_n=EVERY, train_log_every_n=EVERY)
    return [sys.executable, "-m", "projects.home.recap.main", *argv[1:], *helpers.set_args(values)]


def _start_node(command: list[str], log: Path) -> subprocess.Popen:
    # A session of its own: the whole node (launcher and, through their own sessions, workers) can be killed
    # without touching pytest.
    with open(log, "w") as err:  # the launcher keeps its own copy of the descriptor
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the S3 server's endpoint and credentials included
        return subprocess.Popen(command, cwd=helpers.REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)


def _wait_for(what: str, ready, nodes: dict[str, subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        for name, node in nodes.items():
            assert node.poll() is None, f"{name} exited ({node.returncode}) before {what}:\n{_tails(logs)}"
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT:.0f} s:\n{_tails(logs)}"
        time.sleep(0.05)


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)


def _exit_status(node: subprocess.Popen, logs: list[Path]) -> int:
    try:
        return node.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a launcher did not finish within {TIMEOUT:.0f} s:\n{_tails(logs)}")


def _lose_node(launcher: subprocess.Popen) -> None:
    """SIGKILL a launcher's process group and those of its workers (torchrun starts each in a session of its own),
    like a machine that is lost: nothing gets to clean up."""
    groups = {launcher.pid}
    for worker in children(launcher.pid):
        try:
            groups.add(os.getpgid(worker))
        except ProcessLookupError:
            continue
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
    launcher.wait(timeout=30)


@contextlib.contextmanager
def _save_dir(kind: str, tmp_path: Path):
    """The run's save_dir: a local directory, or a prefix on a local S3-protocol server."""
    if kind == "disk":
        yield tmp_path / "run"
        return
    (tmp_path / "moto").mkdir()
    with s3_server(tmp_path / "moto") as server:
        yield f"{server.make_bucket('runs')}/run"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["disk", "s3"])
def test_a_lost_node_is_replaced_and_the_job_resumes_from_its_checkpoint(tmp_path, kind):
    with _save_dir(kind, tmp_path) as save_dir:
        _rehearse(tmp_path, save_dir)


def _start_node0(data: Path, save_dir: Path | str, nodes: dict[str, subprocess.Popen], logs: list[Path]
                 ) -> list[str]:
    """Start node 0 on a free port and wait for its rendezvous store; the node command (with that port). A port
    taken by another process before the launcher bound it (node 0 then fails to reach its own store, after torchrun's
    60 s connect timeout) is retried on another port."""
    for attempt in range(3):
        port = _free_port()
        command = _node_command(data, save_dir, port)
        node = nodes["node 0"] = _start_node(command, logs[0])
        deadline = time.monotonic() + TIMEOUT
        while not _listening(port):
            if node.poll() is not None:
                # Port taken: torchrun's c10d backend, failing to bind it, connects as a client and gives up.
                log = logs[0].read_text()
                taken = "connection to the C10d store has failed" in log or "address already in use" in log.lower()
                assert taken and attempt < 2, f"node 0 exited ({node.returncode}) before its rendezvous store:\n" \
                    + _tails(logs)
                break
            assert time.monotonic() < deadline, f"no rendezvous store within {TIMEOUT:.0f} s:\n{_tails(logs)}"
            time.sleep(0.05)
        else:
            return command
    raise AssertionError("unreachable: the last attempt returns or fails")


def _rehearse(tmp_path: Path, save_dir: Path | str) -> None:
    data = helpers.make_data(tmp_path / "data")
    checkpoints = location(save_dir) / "checkpoints"
    logs = [tmp_path / "node0.log", tmp_path / "node1.log", tmp_path / "node1_again.log"]
    nodes: dict[str, subprocess.Popen] = {}
    try:
        # Node 0 first, so that it hosts the rendezvous (losing that node would end the job).
        command = _start_node0(data, save_dir, nodes, logs)
        nodes["node 1"] = _start_node(command, logs[1])
        _wait_for("checkpoint", lambda: bool(list_checkpoints(checkpoints)), nodes, logs)
        first = list_checkpoints(checkpoints)[0].step
        assert first < STEPS
        _lose_node(nodes.pop("node 1"))
        nodes["node 1 again"] = _start_node(command, logs[2])
        statuses = {name: _exit_status(node, logs) for name, node in nodes.items()}
    finally:
        for node in nodes.values():
            if node.poll() is None:
                _lose_node(node)
    text = {log.name: log.read_text() for log in logs}
    assert statuses == {"node 0": 0, "node 1 again": 0}, _tails(logs)
    # Rank 0 logs the run; after the restart it may sit on either node.
    after = text["node0.log"] + text["node1_again.log"]
    # The tables are split over both nodes' workers.
    everything = "".join(text.values())
    assert "sharding plan for 2 rank(s)" in everything
    assert "rank:0/cpu" in everything and "rank:1/cpu" in everything
    resumed = re.findall(rf"resumed from {re.escape(str(checkpoints))}/step_(\d+) \(step (\d+)", after)
    assert len(resumed) == 1, _tails(logs)
    step = int(resumed[0][0])
    assert resumed[0][1] == str(step) and first <= step < STEPS and step % EVERY == 0
    assert f"training finished at step {STEPS}" in after
    final = list_checkpoints(checkpoints)
    assert final[-1].step == STEPS
    assert {p.name for p in final[-1].path.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}


def test_the_docs_show_the_command_the_rehearsal_runs():
    page = (helpers.REPO / "docs/guides/clusters.md").read_text()
    assert COMMAND in page[page.index("## Multi-node"):]


def _launcher(*argv: str):
    from projects.home.recap.commands.train import add_arguments, launcher_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return launcher_options(parser.parse_args(["--config", "x.yaml", *argv]))


def test_multi_node_options_become_a_c10d_rendezvous_for_torchrun():
    rendezvous = _launcher("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-endpoint", "host0:29400",
                           "--rdzv-id", "exp1", "--max-restarts", "1")
    assert rendezvous == Rendezvous(2, "host0:29400", "exp1")
    assert launcher_arguments(1, "m", ["train"], 1, rendezvous) == [
        "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=host0:29400", "--rdzv-id=exp1",
        "--nproc-per-node=1", "--max-restarts=1", "--module", "m", "train"]
    assert _launcher("--nproc-per-node", "2", "--max-restarts", "1") is None
    assert launcher_arguments(2, "m", [], 1)[:2] == ["--standalone", "--nproc-per-node=2"]
    assert _launcher() is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nnodes", "2", "--rdzv-endpoint", "h:1", "--rdzv-id", "a"], "--nnodes, --rdzv-endpoint, --rdzv-id needs "
                                                                        "--nproc-per-node"),
        (["--max-restarts", "1"], "--max-restarts needs --nproc-per-node"),
        (["--nproc-per-node", "1", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint and --rdzv-id"),
        (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-id", "a"], "--nnodes 2 needs --rdzv-endpoint:"),
        (["--nproc-per-node", "1", "--rdzv-endpoint", "h:1"], "--rdzv-endpoint needs --nnodes of 2 or more"),
        (["--nproc-per-node", "1", "--nnodes", "0"], "--nnodes must be at least 1"),
        (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
        (["--nproc-per-node", "1", "--max-restarts", "-1"], "--max-restarts must be at least 0"),
        (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "host0", "--rdzv-id", "a"],
         "'host0' is not HOST:PORT"),
        (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "h:70000", "--rdzv-id", "a"],
         "'h:70000' is not HOST:PORT"),
        (["--nproc-per-node", "1", "--nnodes", "2", "--rdzv-endpoint", "h:1", "--rdzv-id", "a b"],
         "rendezvous id 'a b' must be"),
    ],
)
def test_launcher_options_that_do_not_fit_are_named(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        _launcher(*argv)


def test_plain_torchrun_on_several_nodes_with_restarts_needs_a_store_per_round(monkeypatch):
    from core.distributed import _attempt_store

    torchrun = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "TORCHELASTIC_USE_AGENT_STORE": "True",
                "TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_RESTART_COUNT": "0"}
    for name, value in torchrun.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match="set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun on every node"):
        _attempt_store(rank=1, world_size=2, local_world_size=1, timeout=None)
