"""A real one-node SLURM cluster on localhost, for tests that submit jobs (submitit, the snakemake slurm executor).

``LocalSlurmCluster().start()`` installs the Debian packages when a binary is missing, then starts *private*
daemons: munged, (with ``accounting=True``, the default) mariadbd and slurmdbd, slurmctld and slurmd. Every
file they use (munge key and socket, slurm.conf, slurmdbd.conf, database, state, spool, pid and log files)
lives in one fresh directory; the daemons listen on free ports of 127.0.0.1; nothing under /etc is read or
written. SLURM or munge daemons that something else runs on the machine are neither reused nor touched: the
private cluster coexists with them.

Clients find the cluster through ``SLURM_CONF``, which ``start()`` sets in ``os.environ`` (so sbatch, squeue,
sacct and the submitit / snakemake subprocesses inherit it) and ``stop()`` restores. For clients that drop
SLURM_* variables (the srun of the snakemake slurm-jobstep plugin, inside each job) ``start()`` also symlinks
/run/slurm/conf/slurm.conf (where SLURM clients look last) to the private config, unless the machine has
/etc/slurm/slurm.conf or something else at that path; ``stop()`` removes the link.

``stop()`` cancels the jobs left, then stops exactly the daemons it started, by PID (SIGTERM, then SIGKILL
after a timeout); the daemons also get SIGTERM from the kernel if the test process dies first
(PR_SET_PDEATHSIG).

Without accounting ``sacct`` fails ("Slurm accounting storage is disabled"); finished jobs stay visible to
``squeue --states=all`` / ``scontrol show job`` for ``MinJobAge`` (600 s) either way.

A machine that cannot run it raises :class:`SlurmUnavailable`, whose message says why (not root, nothing to
install with, apt failed, a daemon did not come up, with the tails of the daemon logs).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

MUNGE_USER = "munge"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
# binary -> the Debian (bookworm) package that provides it
BINARIES = {
    "munged": "munge",
    "munge": "munge",
    "unmunge": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "squeue": "slurm-client",
    "sinfo": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
}
ACCOUNTING_BINARIES = {
    "slurmdbd": "slurmdbd",
    "sacct": "slurm-client",
    "sacctmgr": "slurm-client",
    "mariadbd": "mariadb-server-core",
    "mariadb-install-db": "mariadb-server-core",
    "my_print_defaults": "mariadb-client-core",  # mariadb-install-db needs it
    "mariadb": "mariadb-client-core",
}
# Where SLURM 22.05 clients look when $SLURM_CONF is unset and /etc/slurm/slurm.conf is absent (slurmd's configless
# cache). The fixture links its slurm.conf there for clients that scrub SLURM_* from the environment, e.g. the
# `srun` that snakemake-executor-plugin-slurm-jobstep 0.6.1 runs inside each job.
FALLBACK_CONF = Path("/run/slurm/conf/slurm.conf")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the local SLURM cluster; the message says why."""


def which(name: str) -> str | None:
    """Path of an executable, also looking in the sbin directories a non-login PATH may lack."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def missing_binaries(binaries: dict[str, str]) -> list[str]:
    return [name for name in binaries if which(name) is None]


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a text file, or a note that it cannot be read."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as error:
        return f"<{path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_resources() -> tuple[int, int]:
    """(CPUs usable by this process, half of the RAM in MB): what the node offers to jobs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
            break
    return max(cpus, 1), max(mem_kb // 1024 // 2, 256)


def pwd_entry(user: str):
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def ensure_installed(binaries: dict[str, str], timeout: float = 600.0) -> float:
    """apt-get install the packages of the binaries that are missing; return the seconds it took (0: none missing).

    Non-interactive, ``--no-install-recommends``; ``apt-get update`` runs only when the install fails without it.
    While apt runs, a temporary /usr/sbin/policy-rc.d (only if the machine has none) keeps the maintainer scripts
    from starting the system's munge/slurm services. Raises :class:`SlurmUnavailable` when it cannot install.
    """
    missing = missing_binaries(binaries)
    if not missing:
        return 0.0
    packages = sorted({binaries[name] for name in missing})
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"not root, so cannot apt-get install {' '.join(packages)} (missing: {', '.join(missing)})"
        )
    apt = shutil.which("apt-get")
    if apt is None:
        raise SlurmUnavailable(f"no apt-get to install {' '.join(packages)} (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="a")
    install = [apt, "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef",
               "-o", "Dpkg::Options::=--force-confold", *packages]
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    started = time.monotonic()
    try:
        if own_policy:
            policy.write_text("#!/bin/sh\n# tests/slurm_cluster.py: while apt-get runs, then removed\nexit 101\n")
            policy.chmod(0o755)
        result = _run_apt(install, env, timeout)
        if result.returncode != 0:  # stale or absent package lists: update once, then retry
            update = _run_apt([apt, "update", "-q"], env, timeout)
            if update.returncode != 0:
                raise SlurmUnavailable(f"apt-get update failed (exit {update.returncode}):\n{update.stdout[-3000:]}")
            result = _run_apt(install, env, timeout)
        if result.returncode != 0:
            raise SlurmUnavailable(
                f"apt-get install {' '.join(packages)} failed (exit {result.returncode}):\n{result.stdout[-3000:]}"
            )
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    still_missing = missing_binaries(binaries)
    if still_missing:
        raise SlurmUnavailable(
            f"apt-get install {' '.join(packages)} left binaries missing: {', '.join(still_missing)}"
        )
    return time.monotonic() - started


def _run_apt(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, check=False, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise SlurmUnavailable(f"{' '.join(command[:2])} did not finish within {timeout:.0f} s") from error


try:  # resolved here, not in the forked child
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn, run after the uid change: the daemon gets SIGTERM when the test process dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM one process we started; SIGKILL it if it is still there after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class LocalSlurmCluster:
    """One-node SLURM cluster (one partition, ``debug``) run by private daemons; see the module docstring.

    Use as ``with LocalSlurmCluster() as cluster: ...`` or call :meth:`start` / :meth:`stop`. ``timings``
    records ``install_s`` (0 when nothing was missing) and ``start_s`` (first daemon to node idle), of which
    ``munged_s`` and ``accounting_s`` (mariadbd + slurmdbd).
    """

    def __init__(self, root: str | Path | None = None, *, accounting: bool = True, partition: str = "debug",
                 cluster_name: str = "ci", start_timeout: float = 60.0, stop_timeout: float = 20.0,
                 install: bool = True, keep_files: bool = False, cred_expire: int = 10, kill_wait: int = 5):
        """``root``: directory for the cluster's files (default: a fresh /tmp/slurm-ci-*, removed by stop()
        unless ``keep_files``). ``accounting``: also run mariadbd + slurmdbd so sacct works. ``cred_expire``
        (seconds) is also how long a requeued job waits before it may start again (SLURM's default: 120).
        ``kill_wait``: seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or times out."""
        self.accounting = accounting
        self.partition = partition
        self.cluster_name = cluster_name
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.install = install
        self.keep_files = keep_files
        self.cred_expire = cred_expire
        self.kill_wait = kill_wait
        self._root_arg = Path(root) if root is not None else None
        self.root: Path | None = None
        self.node_name = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        self.ports: dict[str, int] = {}
        self._logs: dict[str, list[Path]] = {}
        self._saved_env: dict[str, str | None] | None = None
        self.fallback_linked = False  # whether FALLBACK_CONF is our symlink
        self._made_dirs: list[Path] = []
        self._failed = False

    # ---- paths -------------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF pointing at this cluster (for subprocesses started with env=)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def log_file(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    @property
    def binaries(self) -> dict[str, str]:
        return {**BINARIES, **(ACCOUNTING_BINARIES if self.accounting else {})}

    # ---- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Self:
        """Install if needed, start the daemons, wait until the node is idle in sinfo.

        Raises :class:`SlurmUnavailable` (after stopping whatever it started) when it cannot.
        """
        if self.processes:
            raise RuntimeError("this LocalSlurmCluster is already started")
        if os.geteuid() != 0:
            raise SlurmUnavailable("not root: slurmd must run as root to launch jobs")
        if self.install:
            self.timings["install_s"] = ensure_installed(self.binaries)
        elif missing_binaries(self.binaries):
            raise SlurmUnavailable(f"binaries missing (install=False): {', '.join(missing_binaries(self.binaries))}")
        if pwd_entry(MUNGE_USER) is None:
            raise SlurmUnavailable(f"no '{MUNGE_USER}' user (the munge package creates it)")
        started = time.monotonic()
        try:
            self._prepare_files()
            self._set_env()
            self._link_fallback_conf()
            self._start_munged()
            self.timings["munged_s"] = time.monotonic() - started
            if self.accounting:
                self._start_accounting()
                self.timings["accounting_s"] = time.monotonic() - started - self.timings["munged_s"]
            self._start_daemon("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
            self._wait(self._controller_up, "slurmctld to answer 'scontrol ping'", ["slurmctld"])
            self._start_daemon("slurmd", [which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node_name])
            self._wait(lambda: self.node_state() == "idle", f"node {self.node_name} to be idle in sinfo",
                       ["slurmctld", "slurmd"])
        except BaseException:
            self._failed = True  # keep the files (logs) of a start that failed
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Cancel remaining jobs, stop the daemons this object started (by PID), restore SLURM_CONF.

        Safe to call more than once, and after a failed start()."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            process = self.processes.pop(name, None)
            if process is not None:
                terminate(process, self.stop_timeout)
        self._restore_env()
        self._unlink_fallback_conf()
        if self.root is not None and not (self.keep_files or self._failed) and self._root_arg is None:
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- clients -----------------------------------------------------------------------------------
    def run(self, command: str, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a client (sbatch, squeue, ...) against this cluster; stdout/stderr captured as text."""
        result = subprocess.run([which(command) or command, *args], check=False, env=self.env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{command} {' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable ARGS``; return the job id."""
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str | None:
        """A job's state as squeue sees it (PENDING, RUNNING, COMPLETED, ...); None once squeue forgot it."""
        result = self._run_quiet("squeue", "--noheader", "--states=all", "--jobs", str(job_id), "--format=%T")
        words = result.stdout.split()
        return words[0] if result.returncode == 0 and words else None

    def wait_for_job(self, job_id: str, timeout: float = 60.0, poll: float = 0.2) -> str:
        """Poll squeue until the job has finished; return its final state (COMPLETED, FAILED, CANCELLED, ...)."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state is not None and state not in ACTIVE_STATES:
                return state
            time.sleep(poll)
        raise TimeoutError(
            f"job {job_id} still {state} after {timeout:.0f} s\n{self._log_tails(['slurmctld', 'slurmd'])}"
        )

    def node_state(self) -> str:
        """The node's state as sinfo prints it (idle, mixed, allocated, down*, ...); '' when sinfo fails."""
        result = self._run_quiet("sinfo", "--noheader", "--nodes", self.node_name, "--format=%T")
        return result.stdout.strip() if result.returncode == 0 else ""

    # ---- internals ---------------------------------------------------------------------------------
    def _prepare_files(self) -> None:
        if self._root_arg is not None:
            self.root = self._root_arg
            self.root.mkdir(parents=True, exist_ok=True)
        else:  # a short path: the unix socket paths must fit in sun_path (108 bytes)
            self.root = Path(tempfile.mkdtemp(prefix="slurm-ci-"))
        self.root.chmod(0o755)  # munged (user munge) must reach munge/
        for sub in ("etc", "log", "state", "spool", "run", "db"):
            (self.root / sub).mkdir(exist_ok=True)
        munge = pwd_entry(MUNGE_USER)
        munge_dir = self.root / "munge"
        munge_dir.mkdir(exist_ok=True)
        munge_dir.chmod(0o755)
        os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
        key = munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(128))  # what `mungekey --create` writes: 1024 random bits
        os.chown(key, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        self.ports = {name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadbd")}
        self.conf.write_text(self.slurm_conf())
        if self.accounting:
            dbd_conf = self.conf.parent / "slurmdbd.conf"  # slurmdbd looks for it next to $SLURM_CONF
            dbd_conf.write_text(self.slurmdbd_conf())
            dbd_conf.chmod(0o600)  # slurmdbd refuses a conf file others can read

    def slurm_conf(self) -> str:
        cpus, mem_mb = machine_resources()
        root = self.root
        if self.accounting:
            accounting = ["AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=127.0.0.1",
                          f"AccountingStoragePort={self.ports['slurmdbd']}",
                          # the munge socket for talking to slurmdbd (AuthInfo's socket= does not cover it)
                          f"AccountingStoragePass={self.munge_socket}"]
        else:
            accounting = ["AccountingStorageType=accounting_storage/none"]
        lines = [
            "# written by tests/slurm_cluster.py: private one-node test cluster",
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.node_name}(127.0.0.1)",
            f"SlurmctldPort={self.ports['slurmctld']}",
            f"SlurmdPort={self.ports['slurmd']}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also delays the restart of a requeued job (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            *accounting,
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            "SchedulerType=sched/backfill",
            # sched_interval: pending jobs (e.g. requeued ones whose begin time passed) are retried every second
            "SchedulerParameters=sched_interval=1,sched_min_interval=0,bf_interval=1",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "ReturnToService=2",
            "MinJobAge=600",
            "JobRequeue=1",
            f"KillWait={self.kill_wait}",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_file('slurmctld')}",
            f"SlurmdLogFile={self.log_file('slurmd')}",
            f"NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def slurmdbd_conf(self) -> str:
        lines = [
            "# written by tests/slurm_cluster.py",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"DbdHost={self.node_name}",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.ports['slurmdbd']}",
            "SlurmUser=root",
            "DebugLevel=info",
            f"LogFile={self.log_file('slurmdbd')}",
            f"PidFile={self.root / 'run' / 'slurmdbd.pid'}",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.ports['mariadbd']}",
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
        ]
        return "\n".join(lines) + "\n"

    def _set_env(self) -> None:
        if self._saved_env is None:
            self._saved_env = {"SLURM_CONF": os.environ.get("SLURM_CONF")}
        os.environ["SLURM_CONF"] = str(self.conf)

    def _restore_env(self) -> None:
        for name, value in (self._saved_env or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = None

    def _link_fallback_conf(self) -> None:
        """Symlink FALLBACK_CONF to our slurm.conf unless the machine has its own config there or in /etc/slurm.

        A dangling link left by an earlier run of this module (killed before stop()) is replaced."""
        if SYSTEM_CONF.exists():
            return  # SLURM_CONF-scrubbing clients get the machine's own cluster; nothing we should change
        if FALLBACK_CONF.is_symlink():
            target = os.readlink(FALLBACK_CONF)
            if not (Path(target).name == "slurm.conf" and Path(target).parent.parent.name.startswith("slurm-ci-")
                    and not Path(target).exists()):
                return
            FALLBACK_CONF.unlink()
        elif FALLBACK_CONF.exists():
            return
        self._made_dirs = [d for d in (FALLBACK_CONF.parent.parent, FALLBACK_CONF.parent) if not d.exists()]
        FALLBACK_CONF.parent.mkdir(parents=True, exist_ok=True)
        FALLBACK_CONF.symlink_to(self.conf)
        self.fallback_linked = True

    def _unlink_fallback_conf(self) -> None:
        if self.fallback_linked:
            if FALLBACK_CONF.is_symlink() and os.readlink(FALLBACK_CONF) == str(self.conf):
                FALLBACK_CONF.unlink()
            for directory in reversed(self._made_dirs):
                try:
                    directory.rmdir()
                except OSError:
                    pass
            self.fallback_linked = False
            self._made_dirs = []

    def _start_munged(self) -> None:
        munge_dir = self.root / "munge"
        command = [which("munged"), "--foreground", f"--socket={self.munge_socket}",
                   f"--key-file={munge_dir / 'munge.key'}", f"--pid-file={munge_dir / 'munged.pid'}",
                   f"--seed-file={munge_dir / 'munged.seed'}"]  # in the foreground it logs to stderr: log/munged.out
        self._start_daemon("munged", command, user=MUNGE_USER)
        self._wait(self._munge_roundtrip, "munged to answer on its socket", ["munged"])

    def _munge_roundtrip(self) -> bool:
        if not self.munge_socket.is_socket():
            return False
        socket_arg = f"--socket={self.munge_socket}"
        try:
            encoded = subprocess.run([which("munge"), socket_arg, "--no-input"], check=False,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5)
            decoded = subprocess.run([which("unmunge"), socket_arg], check=False, input=encoded.stdout,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return encoded.returncode == 0 and decoded.returncode == 0

    def _start_accounting(self) -> None:
        """A private MariaDB (data under db/, TCP on 127.0.0.1 only), then slurmdbd."""
        data = self.root / "db" / "data"
        if not (data / "mysql").is_dir():
            try:
                result = subprocess.run(
                    [which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
                     "--auth-root-authentication-method=normal", "--skip-test-db"],
                    check=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    timeout=self.start_timeout)
            except subprocess.TimeoutExpired as error:
                raise SlurmUnavailable(
                    f"mariadb-install-db did not finish within {self.start_timeout:.0f} s"
                ) from error
            if result.returncode != 0:
                raise SlurmUnavailable(
                    f"mariadb-install-db failed (exit {result.returncode}):\n{result.stdout[-3000:]}"
                )
        db = self.root / "db"
        self._start_daemon("mariadbd", [
            which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=root", "--bind-address=127.0.0.1",
            f"--port={self.ports['mariadbd']}", f"--socket={db / 'mysqld.sock'}", f"--pid-file={db / 'mysqld.pid'}",
            "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
        ])
        self._wait(self._database_up, "mariadbd to accept connections", ["mariadbd"])
        self._start_daemon("slurmdbd", [which("slurmdbd"), "-D"])
        self._wait(lambda: self._run_quiet("sacctmgr", "--noheader", "--parsable2", "list", "cluster").returncode == 0,
                   "slurmdbd to answer 'sacctmgr list cluster'", ["mariadbd", "slurmdbd"])
        clusters = self._run_quiet("sacctmgr", "--noheader", "--parsable2", "list", "cluster", "format=cluster")
        if self.cluster_name not in clusters.stdout.split():
            added = self._run_quiet("sacctmgr", "--immediate", "add", "cluster", self.cluster_name)
            if added.returncode != 0:
                raise SlurmUnavailable(f"sacctmgr add cluster {self.cluster_name} failed: {added.stderr.strip()}\n"
                                       + self._log_tails(["slurmdbd"]))

    def _database_up(self) -> bool:
        try:
            result = subprocess.run([which("mariadb"), "--no-defaults", "--protocol=tcp", "-h", "127.0.0.1",
                                     "-P", str(self.ports["mariadbd"]), "-u", "root", "-e", "SELECT 1"],
                                    check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0

    def _controller_up(self) -> bool:
        result = self._run_quiet("scontrol", "ping")
        return result.returncode == 0 and "is UP" in result.stdout

    def _start_daemon(self, name: str, command: list[str], user: str | None = None) -> None:
        out_path = self.root / "log" / f"{name}.out"  # stdout/stderr; slurm daemons also write log/<name>.log
        self._logs[name] = [self.log_file(name), out_path]
        with open(out_path, "ab") as out:
            try:
                self.processes[name] = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                    cwd=self.root, user=user, group=user, extra_groups=[] if user else None,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 -- started from the main thread, at session start
                )
            except OSError as error:
                raise SlurmUnavailable(f"cannot start {name} ({command[0]}): {error}") from error

    def _wait(self, ready, what: str, daemons: list[str], poll: float = 0.1) -> None:
        """Poll ``ready()`` until true; SlurmUnavailable with the logs' tails on timeout or if a daemon exits."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name in daemons:
                process = self.processes[name]
                if process.poll() is not None:
                    raise SlurmUnavailable(f"daemons did not come up: {name} exited with {process.returncode} while "
                                           f"waiting for {what} (files kept in {self.root})\n"
                                           + self._log_tails(daemons))
            if ready():
                return
            time.sleep(poll)
        raise SlurmUnavailable(f"daemons did not come up: timed out after {self.start_timeout:.0f} s waiting for "
                               f"{what} (files kept in {self.root})\n" + self._log_tails(daemons))

    def _log_tails(self, daemons: list[str]) -> str:
        parts = []
        for name in daemons:
            for path in self._logs.get(name, []):
                if path.exists() and path.stat().st_size:
                    parts.append(f"--- tail of {path} ---\n{tail(path)}")
        return "\n".join(parts)

    def _run_quiet(self, command: str, *args: str) -> subprocess.CompletedProcess:
        try:
            return self.run(command, *args, check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([command, *args], 124, "", "timeout")

    def _cancel_all_jobs(self) -> None:
        """scancel every job still queued or running; wait (bounded) until none is left."""
        def queued() -> list[str]:
            listed = self._run_quiet("squeue", "--noheader", "--format=%i")
            return listed.stdout.split() if listed.returncode == 0 else []

        job_ids = queued()
        if not job_ids:
            return
        self._run_quiet("scancel", *job_ids)
        deadline = time.monotonic() + self.stop_timeout
        while queued() and time.monotonic() < deadline:
            time.sleep(0.2)
