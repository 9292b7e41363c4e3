"""Pipe a generator of tokens (as a language model writes them) into Chorus and save what it says.

    python docs/examples/stream_tokens.py --url ws://127.0.0.1:8000 --model chorus-fast --out reply.wav

The first words are spoken while the "model" below is still writing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

try:
    from serve_app.client import SpeechStream
except ModuleNotFoundError:  # run by a python outside Chorus's virtualenv: run again inside it
    VENV = Path(__file__).resolve().parents[2] / ".venv"
    if (VENV / "bin" / "python").is_file() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(VENV / "bin" / "python", [str(VENV / "bin" / "python"), __file__, *sys.argv[1:]])
    raise SystemExit("stream_tokens.py needs Chorus installed (`make install`): run it with .venv/bin/python") from None

REPLY = (
    "Sure. Here is the plan for tomorrow: we meet at nine, review the draft, and ship it before lunch. "
    "Does that work for you?"
)


def tokens(delay: float = 0.03) -> Iterator[str]:
    """A stand-in for a language model: a few characters at a time, with pauses."""
    for i in range(0, len(REPLY), 4):
        time.sleep(delay)
        yield REPLY[i : i + 4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000")
    parser.add_argument("--model", default="chorus-fast")
    parser.add_argument("--out", default="reply.wav")
    args = parser.parse_args()
    start = time.monotonic()
    with SpeechStream(args.url, model=args.model) as stream, wave.open(args.out, "wb") as out:
        first = True
        for pcm in stream.speak(tokens()):
            if first:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(stream.sample_rate)
                print(f"first audio after {1000 * (time.monotonic() - start):.0f} ms")
                first = False
            out.writeframes(pcm)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
