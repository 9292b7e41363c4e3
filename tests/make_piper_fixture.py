"""Write a tiny, seeded Piper-shaped voice (VITS exported to ONNX) for tests that must not download one.

    python -m tests.make_piper_fixture OUT_DIR [--rename]

Writes ``en_US-tiny-medium`` (one speaker) and ``en_US-tiny_multi-medium`` (two speakers), each as
``.onnx`` + ``.onnx.json``; ``--rename`` writes the variants whose node and tensor names are meaningless.

The graph is built node by node with ``onnx.helper`` and copies the STRUCTURE of a real Piper export
(en_US-joe-medium): the same inputs and output, the sequence masks, the in-graph noise
(two ``RandomNormalLike`` nodes), ``Ceil`` durations, VITS's ``generate_path`` and a mask-free HiFi-GAN
decoder, with node and tensor names as ``torch.onnx.export`` gives them (``/Ceil``, ``/Mul_7_output_0``,
``/dec/conv_pre/Conv``). The deep parts (attention encoder, stochastic duration flows, coupling flows)
are replaced by a few masked convolutions, so the file is about 130 KB.
Deterministic: same arguments, same bytes of output.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import ArrayLike
from onnx import TensorProto, helper, numpy_helper

SAMPLE_RATE = 22050
UPSAMPLE_RATES = (8, 8, 4)  # product 256 = hop length, as en_US-joe-medium
HOP_LENGTH = math.prod(UPSAMPLE_RATES)
NUM_SYMBOLS = 256
HIDDEN = 16  # text encoder channels
LATENT = 8  # channels of m_p, logs_p, z
GIN = 4  # speaker embedding channels
DEC_CHANNELS = 32  # channels after conv_pre, halved by every upsampling
RESBLOCKS = ((3, (1, 2)), (5, (2, 6)))  # (kernel, dilations) of the resblocks after each upsampling
OPSET = 15
IR_VERSION = 8

# The symbols of Piper's espeak phoneme map in id order: symbol i has id [i], as in en_US-joe-medium.
_SYMBOLS = (
    "_^$ !'(),-.:;?abcdefhijklmnopqrstuvwxyz"
    "æçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢʲˈˌːˑ˞βθχᵻⱱ"
    '0123456789\u0327\u0303\u032a\u032f\u0329ʰˤε↓#"'
)
SPEAKERS_OF_TWO = {"alice": 0, "bob": 1}


class _Builder:
    """Collects nodes and initializers, naming them the way ``torch.onnx.export`` does."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._scope = ""
        self._counts: dict[tuple[str, str], int] = {}

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Name the nodes made inside after module path ``name`` (``/dec/conv_pre``)."""
        outer, self._scope = self._scope, name
        try:
            yield
        finally:
            self._scope = outer

    def _next_name(self, kind: str) -> str:
        key = (self._scope, kind)
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        return f"{self._scope}/{kind}" + (f"_{count}" if count else "")

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: object) -> str:
        """Add a node; return its output's name (``out``, or the exporter's ``<node>_output_0``)."""
        name = self._next_name(op_type)
        outs = [out or f"{name}_output_0"]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0]

    def op_n(self, op_type: str, inputs: Sequence[str], outputs: int, **attrs: object) -> list[str]:
        """Add a node with several outputs; return their names."""
        name = self._next_name(op_type)
        outs = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs

    def const(self, value: object, dtype: type = np.int64) -> str:
        """An initializer holding a constant (scalars are 0-d, lists 1-d)."""
        name = self._next_name("Constant") + "_output_0"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, name: str, shape: Sequence[int], std: ArrayLike, mean: ArrayLike = 0.0) -> str:
        """A float32 initializer drawn from N(mean, std) with the builder's generator."""
        data = self.rng.normal(mean, std, size=tuple(shape)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(data, name))
        return name

    def conv(self, x: str, module: str, cin: int, cout: int, kernel: int = 1, dilation: int = 1, **kw: Any) -> str:
        """Conv1d ``module`` (dotted, as ``dec.conv_pre``) with 'same' padding.

        ``kw``: ``gain`` and ``bias_mean`` (scalars or one per output channel), ``bias=False`` for none.
        """
        std = np.reshape(kw.get("gain", 1.0), (-1, 1, 1)) / math.sqrt(cin * kernel)
        w = self.weight(f"{module}.weight", (cout, cin, kernel), std)
        inputs = [x, w]
        if kw.get("bias", True):
            inputs.append(self.weight(f"{module}.bias", (cout,), 0.1, kw.get("bias_mean", 0.0)))
        pad = dilation * (kernel - 1) // 2
        with self.scope("/" + re.sub(r"\.(?!\d)", "/", module)):  # dec.ups.0 -> /dec/ups.0
            return self.op(
                "Conv", inputs, dilations=[dilation], group=1, kernel_shape=[kernel], pads=[pad, pad], strides=[1]
            )


def _sequence_mask(b: _Builder, lengths: str, max_length: str) -> str:
    """``sequence_mask(lengths, max_length).unsqueeze(1).float()``: [b, 1, max_length]."""
    steps = b.op("Range", [b.const(0), max_length, b.const(1)])
    less = b.op("Less", [b.op("Unsqueeze", [steps, b.const([0])]), b.op("Unsqueeze", [lengths, b.const([1])])])
    return b.op("Cast", [b.op("Unsqueeze", [less, b.const([1])])], to=TensorProto.FLOAT)


def _dim(b: _Builder, x: str, axis: int) -> str:
    return b.op("Gather", [b.op("Shape", [x]), b.const(axis)], axis=0)


def _text_encoder(b: _Builder, emb: str) -> tuple[str, str, str, str]:
    """Phoneme ids -> (hidden x [b,H,T], m_p [b,C,T], logs_p [b,C,T], x_mask [b,1,T])."""
    with b.scope("/enc_p/emb"):
        x = b.op("Gather", [emb, "input"])
    with b.scope("/enc_p"):
        x = b.op("Mul", [x, b.const(math.sqrt(HIDDEN), np.float32)])
        x = b.op("Transpose", [x], perm=[0, 2, 1])
        x_mask = _sequence_mask(b, "input_lengths", _dim(b, x, 2))
        x = b.op("Mul", [x, x_mask])
    h = b.conv(x, "enc_p.encoder.convs.0", HIDDEN, HIDDEN, 3, gain=1.4)
    with b.scope("/enc_p/encoder"):
        h = b.op("Mul", [b.op("Relu", [h]), x_mask])
    h = b.conv(h, "enc_p.encoder.convs.1", HIDDEN, HIDDEN, 3, dilation=2)
    with b.scope("/enc_p/encoder"):
        x = b.op("Mul", [b.op("Add", [h, x]), x_mask])
    # logs_p small and negative (about -1), as in trained voices, so the prior's noise stays moderate
    gain, bias_mean = np.repeat([0.7, 0.2], LATENT), np.repeat([0.0, -1.0], LATENT)
    stats = b.conv(x, "enc_p.proj", HIDDEN, 2 * LATENT, 1, gain=gain, bias_mean=bias_mean)
    with b.scope("/enc_p"):
        stats = b.op("Mul", [stats, x_mask])
        m_p, logs_p = b.op_n("Split", [stats, b.const([LATENT, LATENT])], 2, axis=1)
    return x, m_p, logs_p, x_mask


def _duration_predictor(b: _Builder, x: str, x_mask: str, g: str | None, noise_w: str) -> str:
    """Stand-in for the stochastic duration predictor: logw [b,1,T], with noise drawn in the graph."""
    h = b.conv(x, "dp.pre", HIDDEN, HIDDEN)
    cond = b.conv(g, "dp.cond", GIN, HIDDEN, gain=2.0) if g is not None else None
    with b.scope("/dp"):
        h = b.op("Mul", [h if cond is None else b.op("Add", [h, cond]), x_mask])
    h = b.conv(h, "dp.convs.0", HIDDEN, HIDDEN, 3, gain=1.4)
    with b.scope("/dp/convs"):
        h = b.op("Mul", [b.op("Relu", [h]), x_mask])
    p = b.conv(h, "dp.proj", HIDDEN, 2, gain=0.3, bias_mean=math.log(4.0))  # about 4 frames a phoneme
    with b.scope("/dp"):
        p = b.op("Mul", [p, x_mask])
        batch, length = (b.op("Unsqueeze", [_dim(b, p, axis), b.const([0])]) for axis in (0, 2))
        template = b.op("ConstantOfShape", [b.op("Concat", [batch, b.const([2]), length], axis=0)])
        noise = b.op("RandomNormalLike", [template], dtype=TensorProto.FLOAT)
        noise = b.op("Mul", [noise, noise_w])
    e = b.conv(noise, "dp.flows.0", 2, 2, gain=0.3, bias=False)
    with b.scope("/dp"):
        e = b.op("Mul", [b.op("Add", [e, p]), x_mask])
        logw, _ = b.op_n("Split", [e, b.const([1, 1])], 2, axis=1)
    return logw


def _durations(b: _Builder, logw: str, x_mask: str, length_scale: str) -> tuple[str, str]:
    """logw -> (w_ceil [b,1,T] frames per phoneme, y_mask [b,1,F])."""
    w = b.op("Mul", [b.op("Mul", [b.op("Exp", [logw]), x_mask]), length_scale])
    w_ceil = b.op("Ceil", [w])
    frames = b.op("ReduceSum", [w_ceil, b.const([1, 2])], keepdims=0)
    y_lengths = b.op("Cast", [b.op("Clip", [frames, b.const(1.0, np.float32), ""])], to=TensorProto.INT64)
    y_mask = _sequence_mask(b, y_lengths, b.op("ReduceMax", [y_lengths], keepdims=0))
    return w_ceil, y_mask


def _generate_path(b: _Builder, w_ceil: str, attn_mask: str) -> str:
    """VITS ``generate_path``: hard alignment [b, F, T] from durations and the [b,1,F,T] mask."""
    shape = b.op("Shape", [attn_mask])
    batch, t_y, t_x = (b.op("Gather", [shape, b.const(i)], axis=0) for i in (0, 2, 3))
    cum = b.op("CumSum", [w_ceil, b.const(2)])
    flat = b.op("Reshape", [cum, b.op("Unsqueeze", [b.op("Mul", [batch, t_x]), b.const([0])])])
    steps = b.op(
        "Range", [b.const(0.0, np.float32), b.op("Cast", [t_y], to=TensorProto.FLOAT), b.const(1.0, np.float32)]
    )
    path = b.op("Less", [b.op("Unsqueeze", [steps, b.const([0])]), b.op("Unsqueeze", [flat, b.const([1])])])
    dims = [b.op("Unsqueeze", [d, b.const([0])]) for d in (batch, t_x, t_y)]
    path = b.op("Reshape", [b.op("Cast", [path], to=TensorProto.FLOAT), b.op("Concat", dims, axis=0)])
    shifted = b.op("Pad", [path, b.const([0, 1, 0, 0, 0, 0]), ""], mode="constant")
    shifted = b.op("Slice", [shifted, b.const([0]), b.const([-1]), b.const([1]), b.const([1])])
    path = b.op("Transpose", [b.op("Unsqueeze", [b.op("Sub", [path, shifted]), b.const([1])])], perm=[0, 1, 3, 2])
    return b.op("Squeeze", [b.op("Mul", [path, attn_mask]), b.const([1])])


def _expand(b: _Builder, attn: str, stats: str) -> str:
    """[b,C,T] -> [b,C,F]: ``matmul(attn, stats.transpose(1, 2)).transpose(1, 2)``."""
    frames = b.op("MatMul", [attn, b.op("Transpose", [stats], perm=[0, 2, 1])])
    return b.op("Transpose", [frames], perm=[0, 2, 1])


def _flow(b: _Builder, z_p: str, y_mask: str, g: str | None) -> str:
    """Stand-in for the reversed coupling flow: a flip and one mean-only coupling layer, masked by y_mask."""
    with b.scope("/flow/flows.1"):
        z = b.op("Slice", [z_p, b.const([-1]), b.const([-(2**63) + 1]), b.const([1]), b.const([-1])])
    with b.scope("/flow/flows.0"):
        x0, x1 = b.op_n("Split", [z, b.const([LATENT // 2, LATENT // 2])], 2, axis=1)
    h = b.conv(x0, "flow.flows.0.pre", LATENT // 2, HIDDEN)
    with b.scope("/flow/flows.0"):
        h = b.op("Mul", [h, y_mask])
    h = b.conv(h, "flow.flows.0.enc.in_layers.0", HIDDEN, HIDDEN, 3, gain=1.4)
    cond = b.conv(g, "flow.flows.0.enc.cond_layer", GIN, HIDDEN, gain=2.0) if g is not None else None
    with b.scope("/flow/flows.0/enc"):
        h = h if cond is None else b.op("Add", [h, cond])
        h = b.op("Mul", [b.op("Tanh", [h]), y_mask])
    m = b.conv(h, "flow.flows.0.post", HIDDEN, LATENT // 2, gain=0.5)
    with b.scope("/flow/flows.0"):
        x1 = b.op("Mul", [b.op("Sub", [x1, b.op("Mul", [m, y_mask])]), y_mask])
        return b.op("Concat", [x0, x1], axis=1)


def _resblock(b: _Builder, x: str, index: int, channels: int, kernel: int, dilations: Sequence[int]) -> str:
    """HiFi-GAN ResBlock2: ``x = conv(leaky_relu(x)) + x`` for each dilation."""
    for i, dilation in enumerate(dilations):
        with b.scope(f"/dec/resblocks.{index}"):
            xt = b.op("LeakyRelu", [x], alpha=0.1)
        xt = b.conv(xt, f"dec.resblocks.{index}.convs.{i}", channels, channels, kernel, dilation, gain=0.8)
        with b.scope(f"/dec/resblocks.{index}"):
            x = b.op("Add", [xt, x])
    return x


def _upsample(b: _Builder, x: str, index: int, channels: int, rate: int) -> str:
    """LeakyRelu, ConvTranspose1d(kernel 2*rate, stride rate, padding rate/2), resblocks averaged."""
    with b.scope("/dec"):
        x = b.op("LeakyRelu", [x], alpha=0.1)
    out, kernel = channels // 2, 2 * rate
    w = b.weight(f"dec.ups.{index}.weight", (channels, out, kernel), 1.4 / math.sqrt(channels * 2))
    bias = b.weight(f"dec.ups.{index}.bias", (out,), 0.1)
    with b.scope(f"/dec/ups.{index}"):
        pads = [rate // 2, rate // 2]
        x = b.op(
            "ConvTranspose", [x, w, bias], dilations=[1], group=1, kernel_shape=[kernel], pads=pads, strides=[rate]
        )
    blocks = [_resblock(b, x, index * len(RESBLOCKS) + j, out, k, d) for j, (k, d) in enumerate(RESBLOCKS)]
    with b.scope("/dec"):
        total = blocks[0]
        for block in blocks[1:]:
            total = b.op("Add", [total, block])
        return b.op("Div", [total, b.const(float(len(blocks)), np.float32)])


def _decoder(b: _Builder, z: str, g: str | None) -> str:
    """Mask-free HiFi-GAN generator: z [b,C,F] -> audio [b,1,F*256]."""
    x = b.conv(z, "dec.conv_pre", LATENT, DEC_CHANNELS, 7, gain=1.4)
    if g is not None:
        cond = b.conv(g, "dec.cond", GIN, DEC_CHANNELS, gain=1.4)
        with b.scope("/dec"):
            x = b.op("Add", [x, cond])
    channels = DEC_CHANNELS
    for index, rate in enumerate(UPSAMPLE_RATES):
        x = _upsample(b, x, index, channels, rate)
        channels //= 2
    with b.scope("/dec"):
        x = b.op("LeakyRelu", [x], alpha=0.01)
    x = b.conv(x, "dec.conv_post", channels, 1, 7, gain=0.25, bias=False)
    with b.scope("/dec"):
        return b.op("Tanh", [x])


def _speaker(b: _Builder, speakers: int) -> str:
    """``emb_g(sid).unsqueeze(-1)``: [b, GIN, 1]."""
    table = b.weight("emb_g.weight", (speakers, GIN), 1.0)
    with b.scope("/emb_g"):
        g = b.op("Gather", [table, "sid"])
    return b.op("Unsqueeze", [g, b.const([-1])])


def _build_nodes(b: _Builder, speakers: int) -> None:
    """The whole VITS inference graph, in the order ``SynthesizerTrn.infer`` computes it."""
    noise_scale, length_scale, noise_w = (b.op("Gather", ["scales", b.const(i)], axis=0) for i in range(3))
    # A single-speaker export names the phoneme embedding "sid" (a quirk of the real export, kept here).
    emb = b.weight("sid" if speakers == 1 else "enc_p.emb.weight", (NUM_SYMBOLS, HIDDEN), HIDDEN**-0.5)
    x, m_p, logs_p, x_mask = _text_encoder(b, emb)
    g = _speaker(b, speakers) if speakers > 1 else None
    logw = _duration_predictor(b, x, x_mask, g, noise_w)
    w_ceil, y_mask = _durations(b, logw, x_mask, length_scale)
    attn_mask = b.op("Mul", [b.op("Unsqueeze", [x_mask, b.const([2])]), b.op("Unsqueeze", [y_mask, b.const([-1])])])
    attn = _generate_path(b, w_ceil, attn_mask)
    m_p, logs_p = _expand(b, attn, m_p), _expand(b, attn, logs_p)
    eps = b.op("RandomNormalLike", [m_p], dtype=TensorProto.FLOAT)
    z_p = b.op("Add", [m_p, b.op("Mul", [b.op("Mul", [eps, b.op("Exp", [logs_p])]), noise_scale])])
    z = b.op("Mul", [_flow(b, z_p, y_mask, g), y_mask])  # "/Mul_7_output_0": the decoder's input
    b.op("Unsqueeze", [_decoder(b, z, g), b.const([1])], out="output")


def _graph_io(speakers: int) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, ["batch_size", "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, ["batch_size"]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if speakers > 1:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, ["batch_size"]))
    # The real export declares the output as [batch_size, "time", 1, ...]; "time" is always 1.
    shape = ["batch_size", "time", 1, "Unsqueezeoutput_dim_3"]
    return inputs, [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)]


def _rename(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Give every node, initializer and intermediate tensor a meaningless name; keep graph inputs/outputs."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    tensors = list(dict.fromkeys([t.name for t in graph.initializer] + [o for n in graph.node for o in n.output]))
    tensors = [t for t in tensors if t not in keep]
    new = {old: f"t{i}" for old, i in zip(tensors, rng.permutation(len(tensors)), strict=True)}
    for node, i in zip(graph.node, rng.permutation(len(graph.node)), strict=True):
        node.name = f"n{i}"
        node.input[:] = [new.get(t, t) for t in node.input]
        node.output[:] = [new.get(t, t) for t in node.output]
    for init in graph.initializer:
        init.name = new[init.name]


def build_model(speakers: int = 1, seed: int = 0, rename: bool = False) -> onnx.ModelProto:
    """The tiny Piper-shaped ONNX graph (opset 15, IR 8), checked with ``full_check``."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    _build_nodes(b, speakers)
    inputs, outputs = _graph_io(speakers)
    graph = helper.make_graph(b.nodes, "main_graph", inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chorus-tests")
    model.ir_version = IR_VERSION
    if rename:
        _rename(model, rng)
    onnx.checker.check_model(model, full_check=True)
    return model


def voice_config(name: str, speakers: int) -> dict[str, object]:
    """The ``.onnx.json`` Piper reads, with the keys of en_US-joe-medium's."""
    speaker_ids = SPEAKERS_OF_TWO if speakers == 2 else {f"speaker_{i}": i for i in range(speakers)}
    return {
        "audio": {"sample_rate": SAMPLE_RATE, "quality": "medium"},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": {symbol: [i] for i, symbol in enumerate(_SYMBOLS)},
        "num_symbols": NUM_SYMBOLS,
        "num_speakers": speakers,
        "speaker_id_map": speaker_ids if speakers > 1 else {},
        "piper_version": "1.0.0",
        "language": {
            "code": "en_US",
            "family": "en",
            "region": "US",
            "name_native": "English",
            "name_english": "English",
            "country_english": "United States",
        },
        "dataset": name.split("-")[1],
    }


def voice_name(speakers: int = 1, rename: bool = False) -> str:
    """Piper's ``<language>-<dataset>-<quality>`` name of a fixture variant."""
    dataset = "tiny" + ("_multi" if speakers > 1 else "") + ("_renamed" if rename else "")
    return f"en_US-{dataset}-medium"


def make_piper_voice(directory: Path, *, speakers: int = 1, seed: int = 0, rename: bool = False) -> Path:
    """Write ``<name>.onnx`` and ``<name>.onnx.json`` into ``directory``; return the ``.onnx`` path."""
    directory.mkdir(parents=True, exist_ok=True)
    name = voice_name(speakers, rename)
    path = directory / f"{name}.onnx"
    onnx.save(build_model(speakers, seed, rename), path)
    config = json.dumps(voice_config(name, speakers), ensure_ascii=False, indent=2)
    path.with_name(f"{name}.onnx.json").write_text(config + "\n", encoding="utf-8")
    return path


#: The imported fixture addons: addon name -> (speakers, rename).
PIPER_ADDONS = {"tiny-piper": (1, False), "tiny-piper-multi": (2, False), "tiny-piper-renamed": (1, True)}


def build_piper_addons(out: Path) -> dict[str, Path]:
    """Make the fixture voices in ``out/piper-sources`` and import each as an addon into ``out``."""
    from addons.formats.piper import import_piper

    made = {}
    for name, (speakers, rename) in PIPER_ADDONS.items():
        model = make_piper_voice(out / "piper-sources", speakers=speakers, rename=rename)
        made[name] = import_piper(model, out / name, name=name).directory
    return made


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    out, rename = Path(argv[0]), "--rename" in argv[1:]
    for speakers in (1, 2):
        print(make_piper_voice(out, speakers=speakers, rename=rename))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
