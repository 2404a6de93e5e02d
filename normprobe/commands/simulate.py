"""`normprobe simulate {norms,angles,bound,latent-classes}`: the paper's simulations as reproducible commands.

Each subcommand maps its options one to one onto the fields of a config dataclass in
:mod:`normprobe.simulate` (whose defaults follow the paper), prints its tables, and with ``--out DIR``
writes every table as CSV, one self-contained plotly HTML figure and the config as JSON, all
prefixed with the simulation's name so several simulations can share a folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normprobe import __version__
from normprobe.errors import NormprobeError

if TYPE_CHECKING:  # pandas, torch and the simulations load in run(): `normprobe --help` stays fast
    import pandas as pd

DESCRIPTION = """\
The simulations of Draganov et al., "On the Importance of Embedding Norms in Self-Supervised
Learning" (ICML 2025), Section 4 and Appendix B, seeded and quick on a CPU:

  norms           steps for gradient descent to align 500 random positive pairs vs their norm
                  (Figure 2a) and with weight decay (Table 1)
  angles          steps vs the mean initial angle between positives (Figure 2a, Appendix C.2)
  bound           Theorem 3.4 checked against one real autograd step over a grid of norms, angles
                  and learning rates
  latent-classes  a 2-layer network trained with supervised InfoNCE on 4 latent classes: norm vs
                  density (Figure 2b) and per-class norms under class imbalance (Figure 2c)

Tables are printed; --out DIR also writes them as CSV with a self-contained HTML figure and the
config used (JSON).
"""

EPILOG = """\
examples:
  normprobe simulate norms --out sims/
  normprobe simulate norms --initial-norms 1 2 4 8 --weight-decays 0 0.05 20
  normprobe simulate bound --learning-rates 0.01 1 --angle-count 90 --out sims/
  normprobe simulate latent-classes --repeats 8 --epochs 40 --out sims/
"""

NORMS_DESCRIPTION = """\
Sample random positive pairs on the unit sphere, scale both points of every pair to norm r, and run
plain gradient ascent on the embeddings themselves until the mean cosine similarity exceeds
1 - tolerance (paper Section 4.1, Appendix B.1). Theorem 3.4 predicts steps ~ r^2 (Figure 2a).
The same from the --initial-norms with the objective cos - lambda ||z||^2 gives the paper's Table 1:
moderate weight decay converges faster, too much collapses the norms and never converges.

The learning rate is per pair: 0.02 equals the authors' step of 10 on the mean over 500 pairs. The
paper's text does not give its lambda values; the defaults show none, two moderate ones and one that
collapses.
"""

ANGLES_DESCRIPTION = """\
Steer each positive towards its anchor's antipode (t > 0) or onto the anchor (t < 0) to set the mean
initial angle between positives, then count the gradient steps until they align (Figure 2a's angle
axis; the opposite-halves effect of Appendix C.2). Near-antipodal pairs are slower, by a bounded
factor; compare with the unbounded r^2 of `normprobe simulate norms`.
"""

BOUND_DESCRIPTION = """\
Place pairs of equal norm rho at angle phi in a random plane, take one autograd gradient-ascent step of
size gamma on both points, and compare the change of cosine similarity with the exact change
cos(phi - 2 alpha) - cos(phi), where tan(alpha) = gamma sin(phi) / rho^2, and with Theorem 3.4's bound
2 gamma sin^2(phi) / rho^2 (derived in normprobe/simulate/bound.py). The derivation says the bound holds
for phi <= pi/2 at every step size, and at obtuse angles only when tan(alpha) >= |cot(phi)|.
"""

LATENT_CLASSES_DESCRIPTION = """\
Latent classes on the sphere, mapped to observations by a random matrix; a 2-layer ReLU network trained
with supervised InfoNCE and plain SGD (paper Section 4.2, Appendix B.2). Reports the embedding norm
against the cosine distance to the nearest neighbour (Figure 2b) and, with class probabilities
proportional to imbalance_ratio^c (~1/16, 1/8, 1/4, 1/2), the mean norm per class over epochs
(Figure 2c). Every repeat draws new centers, map and initial weights and trains a balanced and an
imbalanced network from the same weights, so norm_ratio isolates the effect of class frequency. All
networks train together in batched matrix products.
"""

# Help for every config field, keyed by field name; fields shared by several configs share a text.
FIELD_HELP = {
    "seed": "random seed; the same seed gives the same numbers",
    "pairs": "number of positive pairs",
    "dim": "embedding dimensionality",
    "learning_rate": "gradient-descent step size",
    "tolerance": "converged once the mean cosine similarity exceeds 1 - tolerance",
    "max_steps": "step budget; a run that has not converged by then counts as diverged",
    "patience": "a run whose mean cosine similarity sets no new maximum for this many steps counts as diverged (collapse)",
    "norms": "embedding norms to start from",
    "initial_norms": "initial norms of the weight-decay table (Table 1)",
    "weight_decays": "weight-decay strengths lambda of the objective cos - lambda ||z||^2",
    "norm": "embedding norm of every point",
    "interpolation_count": "number of interpolation values t, evenly spaced in [-max, max]",
    "max_interpolation": "largest |t|; t -> 1 makes positives antipodal, t -> -1 identical",
    "angle_count": "number of angles, evenly spaced in the open interval (0, pi)",
    "learning_rates": "step sizes gamma",
    "repeats": "independent latent geometries (centers, map, initial weights), each trained balanced and imbalanced",
    "classes": "number of latent classes",
    "samples_per_class": "samples per class in the balanced dataset (the imbalanced one has the same total)",
    "latent_dim": "dimension of the latent sphere, and of the network's output",
    "input_dim": "dimension of the observations (the random linear map's output)",
    "spread": "standard deviation of the Gaussian noise around a class center before re-normalising",
    "hidden_dim": "width of the hidden ReLU layer",
    "temperature": "InfoNCE temperature",
    "batch_size": "pairs per SGD step",
    "epochs": "passes over the dataset",
    "imbalance_ratio": "each class is this many times as frequent as the previous one (2: ~1/16, 1/8, 1/4, 1/2)",
}
FIELD_HELP["slack"] = "rounding slack: a measured change up to bound + slack counts as within the bound"


@dataclass(frozen=True)
class Outputs:
    """What a simulation produced: CSV tables by name, the tables to print (title first), one figure."""

    tables: dict[str, pd.DataFrame]
    printed: list[tuple[str, pd.DataFrame]]
    figure: Any


@dataclass(frozen=True)
class Simulation:
    summary: str
    description: str
    config_type: type
    run: Callable[[Any, Any], Outputs]


def _norms(config: Any, device: Any) -> Outputs:
    from normprobe.simulate import figures
    from normprobe.simulate.norms import steps_versus_norm, steps_versus_weight_decay, weight_decay_table

    steps = steps_versus_norm(config, device)
    decay = steps_versus_weight_decay(config, device)
    return Outputs(
        tables={"steps": steps, "weight_decay": decay},
        printed=[
            ("Steps until mean cosine similarity > 1 - tolerance, by initial norm (paper Figure 2a)", steps),
            ("Steps with weight decay lambda ||z||^2 (paper Table 1)", weight_decay_table(decay)),
            ("Weight-decay runs in detail", decay),
        ],
        figure=figures.norms_figure(steps, decay),
    )


def _angles(config: Any, device: Any) -> Outputs:
    from normprobe.simulate import figures
    from normprobe.simulate.angles import steps_versus_angle

    steps = steps_versus_angle(config, device)
    return Outputs(
        tables={"steps": steps},
        printed=[
            (
                "Steps until mean cosine similarity > 1 - tolerance, by mean initial angle (paper Figure 2a, Appendix C.2)",
                steps,
            )
        ],
        figure=figures.angles_figure(steps),
    )


def _bound(config: Any, device: Any) -> Outputs:
    from normprobe.simulate import figures
    from normprobe.simulate.bound import check_bound, summarise_bound

    checks = check_bound(config, device)
    summary = summarise_bound(checks)
    return Outputs(
        tables={"checks": checks, "summary": summary},
        printed=[
            (
                "Theorem 3.4, Delta cos <= 2 gamma sin^2(phi) / rho^2 after one autograd step: share of cases where it holds",
                summary,
            )
        ],
        figure=figures.bound_figure(checks),
    )


def _latent_classes(config: Any, device: Any) -> Outputs:
    from normprobe.simulate import figures
    from normprobe.simulate.latent_classes import (
        class_norm_summary,
        class_norm_trajectory,
        density_summary,
        simulate_latent_classes,
    )

    result = simulate_latent_classes(config, device)
    density = density_summary(result.samples)
    classes = class_norm_summary(result.epochs)
    trajectory = class_norm_trajectory(result.epochs)
    shown_epochs = sorted({round(config.epochs * fraction) for fraction in (0, 0.25, 0.5, 0.75, 1)})
    return Outputs(
        tables={"samples": result.samples, "epochs": result.epochs, "density": density, "classes": classes},
        printed=[
            (
                "Norm by nearest-neighbour distance quintile, densest first, balanced runs (paper Figure 2b)",
                density,
            ),
            (
                "Mean norm per class over epochs, imbalanced runs, averaged over repeats (paper Figure 2c)",
                trajectory[trajectory["epoch"].isin(shown_epochs)],
            ),
            ("Final mean norm per class; norm_ratio = imbalanced / balanced on the same geometry", classes),
        ],
        figure=figures.latent_classes_figure(result.samples, result.epochs),
    )


def _simulations() -> dict[str, Simulation]:
    from normprobe.simulate.configs import AnglesConfig, BoundConfig, LatentClassesConfig, NormsConfig

    return {
        "norms": Simulation(
            "steps to align positive pairs vs embedding norm, with and without weight decay",
            NORMS_DESCRIPTION,
            NormsConfig,
            _norms,
        ),
        "angles": Simulation(
            "steps to align positive pairs vs the mean angle between them",
            ANGLES_DESCRIPTION,
            AnglesConfig,
            _angles,
        ),
        "bound": Simulation(
            "Theorem 3.4's one-step bound checked over norms, angles and learning rates",
            BOUND_DESCRIPTION,
            BoundConfig,
            _bound,
        ),
        "latent-classes": Simulation(
            "supervised InfoNCE on latent classes: norm vs density and class frequency",
            LATENT_CLASSES_DESCRIPTION,
            LatentClassesConfig,
            _latent_classes,
        ),
    }


def _format_default(value: Any) -> str:
    return " ".join(f"{item:g}" for item in value) if isinstance(value, tuple) else f"{value:g}"


def _add_config_options(parser: argparse.ArgumentParser, config_type: type) -> None:
    defaults = config_type()
    for field in fields(config_type):
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{FIELD_HELP[field.name]} (default: {_format_default(default)})"
        if isinstance(default, tuple):
            parser.add_argument(flag, type=float, nargs="+", default=default, metavar="X", help=help_text)
        else:
            parser.add_argument(
                flag,
                type=type(default),
                default=default,
                metavar="N" if isinstance(default, int) else "X",
                help=help_text,
            )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="reproduce the paper's simulations (norms, angles, bound, latent-classes)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulations = parser.add_subparsers(dest="simulation", metavar="SIMULATION", required=True)
    for name, simulation in _simulations().items():
        child = simulations.add_parser(
            name,
            help=simulation.summary,
            description=simulation.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_config_options(child, simulation.config_type)
        child.add_argument(
            "--out",
            metavar="DIR",
            default=None,
            help="write CSV tables, an HTML figure and the config (JSON) into this folder (default: print only)",
        )
        child.add_argument(
            "--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu; the tensors are small)"
        )
    parser.set_defaults(func=run)


def _output_folder(out: str) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NormprobeError(f"--out {out} exists and is not a folder")
    return folder


def _write(folder: Path, name: str, config: Any, outputs: Outputs, seconds: float) -> list[Path]:
    import pandas as pd
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    prefix = name.replace("-", "_")
    written = []
    for table_name, table in outputs.tables.items():
        path = folder / f"{prefix}_{table_name}.csv"
        table.to_csv(path, index=False)
        written.append(path)
    figure_path = folder / f"{prefix}.html"
    outputs.figure.write_html(figure_path, include_plotlyjs=True)
    config_path = folder / f"{prefix}_config.json"
    record = {
        "command": f"normprobe simulate {name}",
        "config": asdict(config),
        "seconds": round(seconds, 2),
        "versions": {
            "normprobe": __version__,
            "torch": torch.__version__,
            "pandas": pd.__version__,
            "python": platform.python_version(),
        },
    }
    config_path.write_text(json.dumps(record, indent=2) + "\n")
    return [*written, figure_path, config_path]


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from normprobe.device import pick_device

    simulation = _simulations()[args.simulation]
    folder = _output_folder(args.out) if args.out is not None else None
    values = {field.name: getattr(args, field.name) for field in fields(simulation.config_type)}
    config = simulation.config_type(
        **{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    )
    device = pick_device(args.device)
    if device.type == "cpu":
        # The tensors are small: fanning every operation out over threads costs more than it saves.
        torch.set_num_threads(1)
    start = time.perf_counter()
    outputs = simulation.run(config, device)
    seconds = time.perf_counter() - start
    with pd.option_context(
        "display.width",
        200,
        "display.max_columns",
        None,
        "display.max_rows",
        None,
        "display.float_format",
        "{:.4g}".format,
    ):
        for title, table in outputs.printed:
            print(f"\n{title}\n{table.to_string(index=False)}")
    print(f"\nnormprobe simulate {args.simulation}: {seconds:.1f} s on {device}")
    if folder is not None:
        for path in _write(folder, args.simulation, config, outputs, seconds):
            print(f"wrote {path}")
    return 0
