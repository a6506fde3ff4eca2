"""A pure-numpy interpreter for the trainer's int8 TFLite models, for devices without a LiteRT wheel.

32-bit Raspberry Pi OS (armv7l) has no wheel of ai-edge-litert, none of tflite-runtime for Python 3.11 and
only Debian's numpy 1.24. This interpreter runs the ops the trainer's int8 Conv1D autoencoder is converted
to (RESHAPE, CONV_2D, STRIDED_SLICE, FULLY_CONNECTED, PACK, and EXPAND_DIMS/SQUEEZE/CONCATENATION for
other converter versions) with the integer arithmetic LiteRT uses, so its int8 outputs equal LiteRT's
exactly: int32 accumulation with the input zero point folded in, then requantization of each output
channel as XNNPACK (LiteRT's default CPU path) does it: the accumulator times the float32 scale
input_scale * filter_scale[c] / output_scale, clamped to the fused activation's range, rounded half to even.

The .tflite flatbuffer is read with the `tflite` package (the schema's generated Python, pure Python over
`flatbuffers`), which installs wherever Python does. It offers the part of LiteRT's Interpreter API that
`edge.model.runtime` uses. Any other op is refused when the model is loaded, naming the op.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tflite

# tflite.TensorType numbers -> numpy dtypes (the ones a quantized model of ours can hold).
_DTYPES = {0: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
# tflite.ActivationFunctionType: NONE, RELU, RELU_N1_TO_1, RELU6 as (low, high) in real units.
_ACTIVATIONS = {0: (-np.inf, np.inf), 1: (0.0, np.inf), 2: (-1.0, 1.0), 3: (0.0, 6.0)}


class UnsupportedModelError(ValueError):
    """The model uses something this interpreter does not implement; the message names it."""


@dataclass(frozen=True)
class _Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: type
    scales: np.ndarray  # float32, one per tensor or per channel; empty for a float tensor
    zero_points: np.ndarray
    quantized_dimension: int
    constant: np.ndarray | None

    @property
    def scale(self) -> float:
        return float(self.scales[0]) if self.scales.size else 0.0

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0]) if self.zero_points.size else 0

    def detail(self) -> dict[str, Any]:
        """What LiteRT's get_input_details()/get_output_details() say about a tensor."""
        return {
            "name": self.name,
            "index": self.index,
            "shape": np.array(self.shape, dtype=np.int32),
            "dtype": self.dtype,
            "quantization": (self.scale, self.zero_point),
            "quantization_parameters": {
                "scales": self.scales.copy(),
                "zero_points": self.zero_points.astype(np.int32),
                "quantized_dimension": self.quantized_dimension,
            },
        }


Step = Callable[[dict[int, np.ndarray]], None]


class NumpyInterpreter:
    """Runs one int8 TFLite model with numpy; same calls as LiteRT's Interpreter for scoring."""

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 1, *,
                 model_content: bytes | None = None) -> None:
        del num_threads  # numpy runs the few small matrix products of this model on one thread
        if model_content is None:
            if model_path is None:
                raise ValueError("NumpyInterpreter needs model_path or model_content")
            model_content = Path(model_path).read_bytes()
        self._source = str(model_path) if model_path is not None else "model"
        buffer = bytearray(model_content)
        model = tflite.Model.GetRootAsModel(buffer, 0)
        if model.SubgraphsLength() != 1:
            raise UnsupportedModelError(f"{self._source}: expected one subgraph, got {model.SubgraphsLength()}")
        graph = model.Subgraphs(0)
        self._tensors = [self._read_tensor(model, graph, i, buffer) for i in range(graph.TensorsLength())]
        self._inputs = [int(i) for i in graph.InputsAsNumpy()]
        self._outputs = [int(i) for i in graph.OutputsAsNumpy()]
        self._steps = [self._plan(model, graph.Operators(i)) for i in range(graph.OperatorsLength())]
        self._values: dict[int, np.ndarray] = {
            t.index: t.constant for t in self._tensors if t.constant is not None
        }
        for index in self._inputs:
            tensor = self._tensors[index]
            self._values[index] = np.zeros(tensor.shape, dtype=tensor.dtype)

    # --- LiteRT's Interpreter API, the part edge.model.runtime uses ---

    def allocate_tensors(self) -> None:
        """Buffers are allocated when the model is read; kept for LiteRT's call sequence."""

    def get_input_details(self) -> list[dict[str, Any]]:
        return [self._tensors[i].detail() for i in self._inputs]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [self._tensors[i].detail() for i in self._outputs]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        if index not in self._inputs:
            raise ValueError(f"{self._source}: tensor {index} is not an input of the model")
        tensor = self._tensors[index]
        value = np.asarray(value)
        if value.shape != tensor.shape or value.dtype != tensor.dtype:
            raise ValueError(
                f"{self._source}: input {tensor.name!r} expects {np.dtype(tensor.dtype).name}{list(tensor.shape)}, "
                f"got {value.dtype.name}{list(value.shape)}"
            )
        np.copyto(self._values[index], value)

    def invoke(self) -> None:
        for step in self._steps:
            step(self._values)

    def get_tensor(self, index: int) -> np.ndarray:
        return self._values[index].copy()

    # --- reading the flatbuffer ---

    def _read_tensor(self, model: tflite.Model, graph: tflite.SubGraph, index: int, buffer: bytearray) -> _Tensor:
        tensor = graph.Tensors(index)
        name = tensor.Name().decode("utf-8", "replace")
        if tensor.Type() not in _DTYPES:
            raise UnsupportedModelError(f"{self._source}: tensor {name!r}: type {tensor.Type()} is not supported")
        dtype = _DTYPES[tensor.Type()]
        shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        quantization = tensor.Quantization()
        scales = np.zeros(0, np.float32)
        zero_points = np.zeros(0, np.int64)
        dimension = 0
        if quantization is not None and quantization.ScaleLength():
            scales = quantization.ScaleAsNumpy().astype(np.float32)
            zero_points = quantization.ZeroPointAsNumpy().astype(np.int64)
            dimension = quantization.QuantizedDimension()
        data = model.Buffers(tensor.Buffer())
        constant = None
        raw: Any = None
        if data is not None and data.Offset() > 1:  # a model over 2 GB keeps its buffers after the flatbuffer
            raw = bytes(buffer[data.Offset():data.Offset() + data.Size()])
        elif data is not None and data.DataLength():
            raw = data.DataAsNumpy().tobytes()
        if raw:
            constant = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        return _Tensor(index, name, shape, dtype, scales, zero_points, dimension, constant)

    def _plan(self, model: tflite.Model, operator: tflite.Operator) -> Step:
        code = model.OperatorCodes(operator.OpcodeIndex())
        # Builtin codes above 127 live in BuiltinCode; older files only fill DeprecatedBuiltinCode.
        opcode = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = tflite.opcode2name(opcode) if opcode in tflite.BUILTIN_OPCODE2NAME else str(opcode)
        builders = {
            "RESHAPE": self._reshape, "EXPAND_DIMS": self._reshape, "SQUEEZE": self._reshape,
            "CONV_2D": self._conv_2d, "FULLY_CONNECTED": self._fully_connected,
            "STRIDED_SLICE": self._strided_slice, "PACK": self._pack, "CONCATENATION": self._concatenation,
        }
        if name not in builders:
            raise UnsupportedModelError(
                f"{self._source}: operator {name} is not implemented by the numpy interpreter "
                f"(it runs {', '.join(sorted(builders))}); install ai-edge-litert or tflite-runtime"
            )
        inputs = [int(i) for i in operator.InputsAsNumpy()]
        (output,) = [int(i) for i in operator.OutputsAsNumpy()]
        return builders[name](operator, inputs, output)

    def _options(self, operator: tflite.Operator, kind: type) -> Any:
        table = operator.BuiltinOptions()
        options = kind()
        if table is not None:
            options.Init(table.Bytes, table.Pos)
        return options

    def _same_quantization(self, op: str, inputs: list[int], output: int) -> None:
        """Data-movement ops copy int8 values unchanged, which is only right when in and out share their scale."""
        out = self._tensors[output]
        for index in inputs:
            tensor = self._tensors[index]
            if tensor.scale != out.scale or tensor.zero_point != out.zero_point:
                raise UnsupportedModelError(
                    f"{self._source}: {op} {out.name!r}: input and output quantization differ "
                    f"({tensor.scale}, {tensor.zero_point}) vs ({out.scale}, {out.zero_point})"
                )

    # --- the ops ---

    def _reshape(self, operator: tflite.Operator, inputs: list[int], output: int) -> Step:
        source, shape = inputs[0], self._tensors[output].shape
        self._same_quantization("RESHAPE", inputs[:1], output)

        def step(values: dict[int, np.ndarray]) -> None:
            values[output] = values[source].reshape(shape)

        return step

    def _strided_slice(self, operator: tflite.Operator, inputs: list[int], output: int) -> Step:
        options = self._options(operator, tflite.StridedSliceOptions)
        if options.EllipsisMask() or options.NewAxisMask() or options.Offset():
            raise UnsupportedModelError(f"{self._source}: STRIDED_SLICE with ellipsis, new-axis or offset masks")
        source, begin, end, strides = inputs
        self._same_quantization("STRIDED_SLICE", [source], output)
        rank = len(self._tensors[source].shape)
        begins, ends, steps = (self._constant(i, "STRIDED_SLICE") for i in (begin, end, strides))
        slices = []
        for axis in range(rank):
            shrink = options.ShrinkAxisMask() >> axis & 1
            low = None if options.BeginMask() >> axis & 1 else int(begins[axis])
            high = None if options.EndMask() >> axis & 1 else int(ends[axis])
            if shrink:  # one element, like TensorFlow's x[i]
                high = None if low == -1 else (low or 0) + 1
            slices.append(slice(low, high, int(steps[axis])))
        index, shape = tuple(slices), self._tensors[output].shape

        def step(values: dict[int, np.ndarray]) -> None:
            values[output] = values[source][index].reshape(shape)

        return step

    def _pack(self, operator: tflite.Operator, inputs: list[int], output: int) -> Step:
        axis = self._options(operator, tflite.PackOptions).Axis()
        self._same_quantization("PACK", inputs, output)
        shape = self._tensors[output].shape

        def step(values: dict[int, np.ndarray]) -> None:
            values[output] = np.stack([values[i] for i in inputs], axis=axis).reshape(shape)

        return step

    def _concatenation(self, operator: tflite.Operator, inputs: list[int], output: int) -> Step:
        options = self._options(operator, tflite.ConcatenationOptions)
        if options.FusedActivationFunction():
            raise UnsupportedModelError(f"{self._source}: CONCATENATION with a fused activation")
        self._same_quantization("CONCATENATION", inputs, output)
        axis = options.Axis()

        def step(values: dict[int, np.ndarray]) -> None:
            values[output] = np.concatenate([values[i] for i in inputs], axis=axis)

        return step

    def _conv_2d(self, operator: tflite.Operator, inputs: list[int], output: int) -> Step:
        """NHWC convolution of a (1, 1, W, C_in) int8 input: the trainer's Conv1D, as the converter emits it."""
        options = self._options(operator, tflite.Conv2DOptions)
        source, weights, bias = (inputs + [-1])[:3]
        x, filters, out = self._tensors[source], self._tensors[weights], self._tensors[output]
        kernel = self._constant(weights, "CONV_2D")  # (C_out, kh, kw, C_in)
        if x.shape[0] != 1 or x.shape[1] != 1 or kernel.shape[1] != 1:
            raise UnsupportedModelError(f"{self._source}: CONV_2D {out.name!r}: only 1-D convolutions (N=H=1, kh=1)")
        if options.StrideW() != 1 or options.DilationWFactor() != 1:
            raise UnsupportedModelError(f"{self._source}: CONV_2D {out.name!r}: only stride 1, dilation 1")
        channels_out, _, taps, channels_in = kernel.shape
        width = x.shape[2]
        # SAME padding puts the odd extra column at the end (TFLite's ComputePadding); VALID pads nothing.
        before, after = ((taps - 1) // 2, taps - 1 - (taps - 1) // 2) if options.Padding() == 0 else (0, 0)
        matrix = kernel.reshape(channels_out, taps * channels_in).astype(np.int32).T  # (taps*C_in, C_out)
        requantize = self._requantizer(x, filters, out, options.FusedActivationFunction(), bias, channels_out)
        padded = np.zeros((width + before + after, channels_in), dtype=np.int32)
        # Each output position reads `taps` consecutive rows of the padded input, which are contiguous in
        # memory: one strided view of it is the im2col matrix, so a single product computes the layer.
        columns = np.lib.stride_tricks.as_strided(
            padded, shape=(width + before + after - taps + 1, taps * channels_in),
            strides=(padded.strides[0], padded.strides[1]), writeable=False)
        zero_point, shape, inner = x.zero_point, out.shape, padded[before:before + width]

        def step(values: dict[int, np.ndarray]) -> None:
            # Input minus its zero point; padding stays 0, which is the zero point's contribution.
            np.subtract(values[source].reshape(width, channels_in), zero_point, out=inner, dtype=np.int32)
            values[output] = requantize(columns @ matrix).reshape(shape)

        return step

    def _fully_connected(self, operator: tflite.Operator, inputs: list[int], output: int) -> Step:
        options = self._options(operator, tflite.FullyConnectedOptions)
        source, weights, bias = (inputs + [-1])[:3]
        x, filters, out = self._tensors[source], self._tensors[weights], self._tensors[output]
        kernel = self._constant(weights, "FULLY_CONNECTED")  # (units, depth)
        units, depth = kernel.shape
        matrix = kernel.astype(np.int32).T
        requantize = self._requantizer(x, filters, out, options.FusedActivationFunction(), bias, units)
        zero_point, shape = x.zero_point, out.shape

        def step(values: dict[int, np.ndarray]) -> None:
            rows = values[source].reshape(-1, depth).astype(np.int32) - zero_point
            values[output] = requantize(rows @ matrix).reshape(shape)

        return step

    def _requantizer(self, x: _Tensor, filters: _Tensor, out: _Tensor, activation: int, bias: int,
                     channels: int) -> Callable[[np.ndarray], np.ndarray]:
        """int32 accumulators (rows, channels) -> int8 outputs, as XNNPACK's fp32 requantization does it."""
        for tensor in (x, filters, out):
            if tensor.dtype is not np.int8 or not tensor.scales.size:
                raise UnsupportedModelError(
                    f"{self._source}: tensor {tensor.name!r} is {np.dtype(tensor.dtype).name}, not quantized int8: "
                    f"the numpy interpreter runs int8 models only (a bundle's model_int8.tflite)"
                )
        if activation not in _ACTIVATIONS:
            raise UnsupportedModelError(f"{self._source}: {out.name!r}: fused activation {activation}")
        if filters.zero_points.size and np.any(filters.zero_points):
            raise UnsupportedModelError(f"{self._source}: {filters.name!r}: weights must be symmetric (zero point 0)")
        biases = np.zeros(channels, np.int32) if bias < 0 else self._constant(bias, "bias").astype(np.int32)
        filter_scales = np.broadcast_to(filters.scales, (channels,))
        # float32 throughout, in XNNPACK's order: input_scale * filter_scale / output_scale.
        scales = (np.float32(x.scale) * filter_scales.astype(np.float32)) / np.float32(out.scale)
        info = np.iinfo(out.dtype)
        low, high = _ACTIVATIONS[activation]
        zero_point = out.zero_point
        # The activation's range in the output's integer units, as TFLite quantizes it (round(x / scale)).
        floor = info.min if low == -np.inf else max(info.min, zero_point + _round_away(low / out.scale))
        ceiling = info.max if high == np.inf else min(info.max, zero_point + _round_away(high / out.scale))
        lowest, highest = np.float32(floor - zero_point), np.float32(ceiling - zero_point)
        dtype = out.dtype

        def requantize(accumulators: np.ndarray) -> np.ndarray:
            scaled = (accumulators + biases).astype(np.float32) * scales
            np.clip(scaled, lowest, highest, out=scaled)
            return (np.rint(scaled).astype(np.int32) + zero_point).astype(dtype)

        return requantize

    def _constant(self, index: int, op: str) -> np.ndarray:
        tensor = self._tensors[index]
        if tensor.constant is None:
            raise UnsupportedModelError(f"{self._source}: {op}: tensor {tensor.name!r} must be a constant")
        return tensor.constant


def _round_away(value: float) -> int:
    """TfLiteRound: halves away from zero (Python's round() goes to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))
