"""The Azure ML guides' train.py, with amldbg doing the remote-debug and logging work.

Run it locally, as a pipeline step, or as a command job; the flags are the guides' own:

    python samples/train.py --input_data data --output_dir outputs \
        --remote_debug --remote_debug_connection_timeout 300 --remote_debug_port 5678
"""

import argparse
import os

import amldbg

# Driver log, plus Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING is set.
log = amldbg.get_logger("train")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser("train")
    parser.add_argument("--input_data", default=None, help="folder of training data")
    parser.add_argument("--output_dir", default="outputs", help="where the model is written")
    parser.add_argument("--epochs", type=int, default=3)
    amldbg.add_args(parser)  # --remote_debug and friends
    return parser.parse_args()


def train(epochs: int, samples: list) -> float:
    weight = 0.0
    for epoch in range(epochs):
        for x, y in samples:
            error = weight * x - y
            weight -= 0.01 * error * x
        loss = sum((weight * x - y) ** 2 for x, y in samples) / len(samples)
        log.info("epoch %d: loss %.4f", epoch, loss, extra={"custom_dimensions": {"epoch": epoch}})
        amldbg.log_metric("loss", loss, step=epoch)  # run metrics, MLflow, or the driver log
    return weight


def main() -> None:
    args = parse_args()
    amldbg.enable_remote_debug(args)  # no-op unless --remote_debug was given

    # A step must create its own output directory.
    os.makedirs(args.output_dir, exist_ok=True)
    samples = [(x / 10, 3 * x / 10) for x in range(1, 21)]
    weight = train(args.epochs, samples)
    with open(os.path.join(args.output_dir, "model.txt"), "w") as model:
        model.write(f"{weight}\n")
    amldbg.log_metric("weight", weight)
    log.info("trained weight %.3f; model written to %s", weight, args.output_dir)


if __name__ == "__main__":
    main()
