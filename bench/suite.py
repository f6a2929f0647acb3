"""The serving benchmark, in one command: mmserve against the in-process limit and its peers, over HTTP.

    python bench/suite.py                      # every cell once (about 20 minutes on 2 cores)
    python bench/suite.py --repeat 4 --both-orders   # the measurement: medians of 4 runs (about 75 minutes)
    python bench/suite.py --quick              # a smoke run: short cells, two concurrencies (2-4 minutes)
    python bench/suite.py --servers mmserve litserve --endpoints /embed --concurrency 1 64 --repeat 4
    python bench/suite.py --servers mmserve --endpoints /transcribe --model runs/speech/weights   # one scenario

Every response is verified against the answer the model gives in-process for that input (see
`bench/verify.lua`); a wrong answer counts as an error. `/transcribe` (scene sentences spoken by espeak-ng)
runs on mmserve (defaults) alone, the peers having no speech, when the model hears: its checkpoint has the
audio tower. Load comes from wrk, in its own process. The
servers run one at a time, each its own process on a free port. Prints markdown tables and writes them into
docs/benchmarks.md, between its markers (`<!-- suite:begin serving -->` ... `<!-- suite:end serving -->`,
`bench/sections.py`: the sections written by hand around them are kept), and docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import gc
import logging
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

if __package__ in (None, ""):  # `python bench/suite.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bench import report, wrk
from bench.measurements import Cell, from_wrk
from bench.sections import replace_section
from bench.servers import REPO_ROOT, Server, ServerSpec, specs
from bench.workload import ENDPOINT_KIND, build, save, write_lua

logger = logging.getLogger("bench")

ENDPOINTS = ("/embed", "/caption", "/transcribe")
SECTION = "serving"  # the suite's section of its output file (between its markers)
TRANSCRIBING = ("mmserve",)  # the servers that run /transcribe (the peers do not hear; the other mmserve
# variants differ only in how captions are batched)
PEER_PACKAGES = {"litserve": "litserve"}  # peers whose package is not one of mmserve's own dependencies
CAPTION_CLIENTS = 24  # "an embedding's p50 while 24 clients caption"
FULL = {"duration_s": 10.0, "warmup_s": 2.0, "concurrency": [1, 8, 32, 64, 128], "memory": [1000, 20000]}
QUICK = {"duration_s": 1.0, "warmup_s": 0.5, "concurrency": [1, 32], "memory": [100, 500]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: short cells, concurrency 1 and 32")
    parser.add_argument("--duration-s", type=float, help="measured seconds per cell (10; quick: 1)")
    parser.add_argument("--warmup-s", type=float, help="unmeasured seconds before each cell (2; quick: 0.5)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="closed-loop clients (1 8 32 64 128)")
    parser.add_argument("--servers", nargs="+", choices=list(specs("cpu")), default=list(specs("cpu")))
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU host (servers, limit and answers)")
    parser.add_argument(
        "--model", default="builtin", help="mmserve's MMSERVE_MODEL and the expected answers' (mmserve servers only)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of every cell; the tables give medians")
    parser.add_argument("--both-orders", action="store_true", help="every other run takes the servers in reverse")
    parser.add_argument(
        "--rate",
        nargs="+",
        default=["/embed=100", "/caption=80"],
        metavar="ENDPOINT=RPS",
        help="open-loop requests/s per endpoint (0: no open-loop cell)",
    )
    parser.add_argument("--open-connections", type=int, default=256, help="connections the open loop may use")
    parser.add_argument("--memory", type=int, nargs=2, metavar=("N1", "N2"), help="RSS after N1 and N2 requests")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="per embedding component")
    parser.add_argument(
        "--words",
        type=int,
        nargs=2,
        default=[3, 48],
        metavar=("MIN", "MAX"),
        help="/embed texts of MIN to MAX words (3 48); another mix writes its own section and plot",
    )
    parser.add_argument(
        "--output", type=Path, help="docs/benchmarks.md (quick: bench/results/quick.md): its suite section only"
    )
    parser.add_argument("--plot", type=Path, help="docs/benchmarks.png (quick: bench/results/quick.png)")
    parser.add_argument(
        "--smoke", action="store_true", help="mark the written tables as a smoke run (implied by --quick)"
    )
    args = parser.parse_args(argv)
    others = [key for key in args.servers if not key.startswith("mmserve")]
    if args.model != "builtin" and others:
        parser.error(f"--model is for mmserve servers only (the peers and the limit load the built-in model): {others}")
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.rates = {endpoint: float(rps) for endpoint, _, rps in (r.partition("=") for r in args.rate)}
    args.smoke = args.smoke or args.quick
    # A smoke run never overwrites the measured tables unless asked to.
    if args.words[0] < 1 or args.words[0] > args.words[1]:
        parser.error(f"--words {args.words[0]} {args.words[1]}: MIN must be at least 1 and at most MAX")
    args.words = tuple(args.words)
    args.section = SECTION if args.words == (3, 48) else f"{SECTION}-{args.words[0]}-{args.words[1]}-words"
    written = REPO_ROOT / ("bench/results/quick" if args.quick else "docs/benchmarks")
    args.output = args.output or written.with_suffix(".md")
    suffix = "" if args.section == SECTION else "-" + args.section.removeprefix(f"{SECTION}-")
    plot = written.with_name(written.name + suffix)
    args.plot = args.plot or plot.with_suffix(".png")
    return args


class Suite:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.specs = specs(args.device)
        self.cells: list[Cell] = []
        self.memory: list[report.MemoryPoint] = []
        self.notes: list[str] = []
        self.lua: dict[str, Path] = {}
        self.probes: dict[str, str] = {}
        self.workload = workdir / "workload.json"
        self.progress = tqdm(total=self._steps(), unit="cell", dynamic_ncols=True)

    # -- the plan --------------------------------------------------------------------------------
    def _mixed(self) -> bool:
        return {"/embed", "/caption"} <= set(self.args.endpoints)

    def _open_endpoints(self) -> list[str]:
        return [e for e in self.args.endpoints if self.args.rates.get(e, 0) > 0]

    def _endpoints(self, spec: ServerSpec) -> list[str]:
        """The endpoints a server runs: /transcribe only on `TRANSCRIBING` servers, when the model hears."""
        hears = spec.key in TRANSCRIBING and (not self.lua or "/transcribe" in self.lua)
        if spec.key == "limit-naive":  # padding is a question for embeddings only
            return [e for e in self.args.endpoints if e == "/embed"]
        return [e for e in self.args.endpoints if e != "/transcribe" or hears]

    def _server_steps(self, spec: ServerSpec) -> int:
        closed = len(self._endpoints(spec)) * len(self.args.concurrency)
        if not spec.http:
            return closed
        return closed + len(self._open_endpoints()) + (2 if self._mixed() else 0)

    def _steps(self) -> int:
        per_run = sum(self._server_steps(self.specs[key]) for key in self.args.servers)
        return per_run * self.args.repeat + (2 if "mmserve" in self.args.servers and self._mixed() else 0)

    def _step(self, what: str) -> None:
        self.progress.set_description(what)

    # -- the run ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """The requests and their expected answers, from the model in this process (then let go)."""
        from model import load_model

        self._step("expected answers")
        model = load_model(self.args.model, device=self.args.device)
        requests = build(model, words=self.args.words)
        del model
        gc.collect()
        save(requests, self.workload)
        served = [endpoint for endpoint in ENDPOINTS if ENDPOINT_KIND[endpoint] in requests]
        self.probes = {endpoint: requests[ENDPOINT_KIND[endpoint]][0].body for endpoint in served}
        for endpoint in served:
            kind = ENDPOINT_KIND[endpoint]
            self.lua[endpoint] = write_lua(requests[kind], self.workdir / f"{kind}.lua", self.args.tolerance)
        mixed = [r for pair in zip(requests["embed"], requests["caption"], strict=False) for r in pair]
        self.lua["mixed"] = write_lua(mixed, self.workdir / "mixed.lua", self.args.tolerance)
        if "/transcribe" in self.args.endpoints and "/transcribe" not in served:
            self.notes.append(
                f"`/transcribe` was not run: the model ({self.args.model}) has no audio tower, or espeak-ng is "
                "not installed"
            )
        self.progress.total = self._steps()  # now that it is known whether the model hears
        self.progress.refresh()

    def run(self) -> None:
        self.prepare()
        for run in range(self.args.repeat):
            order = self.args.servers[::-1] if self.args.both_orders and run % 2 else self.args.servers
            for key in order:
                spec = self.specs[key]
                try:
                    if spec.http:
                        self._step(f"starting {key}")
                        with Server(spec, self.args.device, self.args.model) as server:
                            self.http(server, run)
                    else:
                        self.limit(spec, run)
                except Exception as e:  # one failed server must not lose the others' numbers
                    logger.exception("%s failed", key)
                    self.notes.append(f"`{key}` (run {run + 1}) failed: {str(e).splitlines()[0][:200]}")
        if "mmserve" in self.args.servers and self._mixed():
            try:
                self.measure_memory()
            except Exception as e:
                logger.exception("memory measurement failed")
                self.notes.append(f"memory measurement failed: {str(e).splitlines()[0][:200]}")
        self.progress.close()

    def limit(self, spec: ServerSpec, run: int) -> None:
        self._step(spec.key)
        kinds = [ENDPOINT_KIND[endpoint] for endpoint in self._endpoints(spec)]
        if not kinds:
            return
        command = [
            sys.executable, "-m", "bench.limit", "--workload", str(self.workload), "--kinds", *kinds,
            "--batch-sizes", *map(str, self.args.concurrency), "--duration-s", str(self.args.duration_s),
            "--device", self.args.device, "--tolerance", str(self.args.tolerance), *spec.command,
        ]  # fmt: skip
        with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as process:
            assert process.stdout is not None
            for line in process.stdout:
                self.cells.append(report.limit_cell(line, run, spec.key))
                self.progress.update()
        if process.returncode != 0:
            raise RuntimeError(f"bench.limit exited with {process.returncode}")

    def http(self, server: Server, run: int) -> None:
        key, args = server.spec.key, self.args
        for endpoint in self._endpoints(server.spec):
            for concurrency in args.concurrency:
                self._step(f"{key} {endpoint} c={concurrency}")
                result = wrk.run(server.url, self.lua[endpoint], concurrency, args.warmup_s, args.duration_s)
                self._add(from_wrk(key, endpoint, "closed", concurrency, result, run))
                self.settle(server)
        for endpoint in self._open_endpoints():
            rate = args.rates[endpoint]
            self._step(f"{key} {endpoint} {rate:g}/s")
            result = wrk.run(
                server.url, self.lua[endpoint], args.open_connections, args.warmup_s, args.duration_s, rate=rate
            )
            self._add(from_wrk(key, endpoint, "open", rate, result, run))
            self.settle(server)
        if self._mixed():
            self.embed_under_captions(server, run)

    def embed_under_captions(self, server: Server, run: int) -> None:
        """/embed at c=1 while 24 clients caption (two wrk processes at once), then /embed alone."""
        key, args = server.spec.key, self.args
        self._step(f"{key} /embed while captioning")
        with ThreadPoolExecutor(1) as pool:
            load_window_s = args.warmup_s + args.duration_s + 1.0
            captions = pool.submit(wrk.run, server.url, self.lua["/caption"], CAPTION_CLIENTS, 0.0, load_window_s)
            time.sleep(0.5)  # the caption load is on before the embedding's warm-up starts
            busy = wrk.run(server.url, self.lua["/embed"], 1, args.warmup_s, args.duration_s)
            load = captions.result()
        self._add(from_wrk(key, "/embed", "busy", 1, busy, run))
        self.cells.append(from_wrk(key, "/caption", "load", CAPTION_CLIENTS, load, run))
        self.settle(server)
        self._step(f"{key} /embed alone")
        alone = wrk.run(server.url, self.lua["/embed"], 1, args.warmup_s, args.duration_s)
        self._add(from_wrk(key, "/embed", "alone", 1, alone, run))

    def settle(self, server: Server) -> None:
        """Wait until the requests wrk left behind are served: one request per endpoint, answered in turn."""
        for endpoint in self._endpoints(server.spec):
            server.post(endpoint, self.probes[endpoint])

    def measure_memory(self) -> None:
        """RSS of a fresh mmserve (defaults) after N1 and N2 verified requests, /embed and /caption alternating."""
        first, total = self.args.memory
        self._step("memory: starting mmserve")
        with Server(self.specs["mmserve"], self.args.device, self.args.model) as server:
            self.memory.append(report.MemoryPoint(0, server.rss_bytes(), 0))
            done = errors = 0
            for target in (first, total):
                self._step(f"memory: {target} requests")
                result = wrk.run(server.url, self.lua["mixed"], 32, limit=target - done)
                done += result.ok + result.errors
                errors += result.errors
                self.memory.append(report.MemoryPoint(done, server.rss_bytes(), errors))
                self.progress.update()

    def _add(self, cell: Cell) -> None:
        self.cells.append(cell)
        if cell.errors:
            logger.warning("%s %s %s %g: %d errors, e.g. %s", *cell.key, cell.errors, cell.examples[:1])
        self.progress.update()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    wrk.wrk_binary()  # fail now, not after the model has loaded
    missing = [key for key, package in PEER_PACKAGES.items() if key in args.servers and not find_spec(package)]
    if missing:  # a peer that cannot start would fail every one of its cells, after the others have run
        sys.exit(f"{', '.join(missing)} not installed: pip install -e '.[bench]', or leave it out of --servers")
    kept = args.output.read_text() if args.output.exists() else ""
    replace_section(kept, args.section, "")  # markers it could not write between fail now, not after the run
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="mmserve-bench-") as workdir, logging_redirect_tqdm():
        suite = Suite(args, Path(workdir))
        suite.run()
    command = "python bench/suite.py " + " ".join(sys.argv[1:] if argv is None else argv)
    tables = report.markdown(suite.cells, suite.memory, suite.notes, args, command.strip(), started)
    sys.stdout.write(tables)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    kept = args.output.read_text() if args.output.exists() else ""  # (again: it may have been edited meanwhile)
    args.output.write_text(replace_section(kept, args.section, tables))
    if report.plot(suite.cells, args.plot, "smoke run, not a measurement" if args.smoke else ""):
        logger.info("wrote %s and %s", args.output, args.plot)
    else:
        logger.info("wrote %s (no plot: matplotlib is not installed; pip install -e '.[bench]')", args.output)


if __name__ == "__main__":
    main()
