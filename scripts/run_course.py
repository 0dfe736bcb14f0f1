"""Run the whole course headless: generate data, execute the notebooks in order, report.

Executed notebooks (with their figures) go to build/notebooks/, HTML copies to build/html/;
the run's model, history, metrics and exported masks are in the output directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    # no MPLBACKEND: the kernel's inline backend embeds every figure in the executed notebook
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def write_run_times(path: Path, seconds: dict[str, int], settings) -> None:
    """Each notebook's execution time and where it was measured (the classroom guide reads it)."""
    import platform

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    device = f"{len(gpus)} GPU(s)" if gpus else f"no GPU, {os.cpu_count()} cores"
    path.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{cpu}, {device}, TensorFlow {tf.__version__}",
                "dataset": str(settings.dataset),
                "profile": settings.profile,
                "seconds": seconds,
            },
            indent=1,
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", default=str(ROOT / "build"), help="where executed notebooks and HTML go")
    args = parser.parse_args()
    os.environ["DEEPLAB_HEADLESS"] = "1"  # no one to move sliders: explorer cells show their static twin
    sys.path.insert(0, str(ROOT / "src"))
    from helpers import data
    from helpers.config import load_settings

    settings = load_settings()
    print(settings.describe(), flush=True)
    data.ensure_data(settings)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    build = Path(args.build).resolve()
    start = time.monotonic()
    seconds = {}
    if notebooks:
        for nb in notebooks:
            t0 = time.monotonic()
            run(
                [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                 "--ExecutePreprocessor.timeout=1800", "--output-dir", str(build / "notebooks"), str(nb)]
            )  # fmt: skip
            run(
                [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html",
                 "--output-dir", str(build / "html"), str(build / "notebooks" / nb.name)]
            )  # fmt: skip
            seconds[nb.stem] = round(time.monotonic() - t0)
            print(f"  {nb.name}: {seconds[nb.stem]} s", flush=True)
        write_run_times(build / "notebooks" / "run-times.json", seconds, settings)
    else:  # before the notebooks exist, the same steps through the command line
        for step in (["train"], ["evaluate"]):
            run([sys.executable, "-m", "helpers", *step])
    metrics_file = settings.output_dir / "metrics.json"
    print(f"\nDone in {time.monotonic() - start:.0f} s.")
    if notebooks:
        print(f"Executed notebooks, with their figures: {build / 'notebooks'}\nHTML: {build / 'html'}")
    print(f"Model, history, metrics and exported masks: {settings.output_dir}")
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        print(f"Final mIoU on the {metrics['split']} split ({metrics['num_images']} images): {metrics['miou']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
