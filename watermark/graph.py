"""A TFLite file's graph folded back to a chain of weight layers: the form of the base model.

A thief can re-express a model's layers without changing what it computes. Each re-expression we know is
folded back here, on the graph of the main subgraph, before any weight is read for alignment:

- weights computed at run time from constants (an ADD of two halves, a TRANSPOSE, a DEQUANTIZE): the graph is
  run once and the computed weights are read; weights that depend on the input or on state are refused;
- a dense layer written as a BATCH_MATMUL with a constant, or as a 1x1 convolution of an input of one
  position, is read as the dense layer it is;
- a linear step followed by a weight layer (a layer without activation, such as an inserted identity layer;
  a MUL or ADD by a constant per channel) folds into that layer: their composition is one affine map;
- a selection step (each output channel one input channel times a positive factor: an identity layer with
  ReLU, a permutation by GATHER, a MUL by a positive constant, copies of channels) after a ReLU or pooling
  folds back into the layer before: it commutes with them;
- layers reading one tensor whose outputs are concatenated on the channel axis (a layer split in parts) merge
  into one;
- ops whose results never reach the model's output (a dead branch holding someone else's weights) are dropped.

What is left must be a chain: each weight layer reads what the previous one alone produced (the first, the
model's input), the output comes from the last, and only the ops of _BETWEEN compute on the data between
them. A branch, a skip connection, any other op reading data, or weight layers inside a called subgraph
(WHILE, IF, CALL) cannot be folded to the base's form: UnreadableModel, which the verifier reports as "cannot
analyse" (exit 2), never as a verdict on weights the file may not use. Folds are exact: only float steps fold
(an integer step clamps to its quantized range), and a selection step's other entries are exactly zero.

Kernels come back in Keras orientation (dense (in, out), conv2d (kh, kw, in, out), depthwise_conv2d (kh, kw,
in, multiplier)), as float64, each with the tensor it reads, so watermark.reader can run the file on the probe
and read what each folded layer reads.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from watermark.errors import UnreadableModel

WEIGHT_OPS = {"FULLY_CONNECTED": "dense", "CONV_2D": "conv2d", "DEPTHWISE_CONV_2D": "depthwise_conv2d"}
# Ops that compute a constant from constants and nothing else (no state, no randomness): computed weights
# may come through these.
_PURE = {"DEQUANTIZE", "QUANTIZE", "CAST", "ADD", "SUB", "MUL", "DIV", "NEG", "TRANSPOSE", "RESHAPE", "SQUEEZE",
         "EXPAND_DIMS", "CONCATENATION", "SLICE", "STRIDED_SLICE", "GATHER", "PACK", "UNPACK", "SPLIT", "SPLIT_V",
         "TILE", "PAD", "PADV2", "FILL", "BROADCAST_TO", "FULLY_CONNECTED", "BATCH_MATMUL", "SUM", "MEAN",
         "MAXIMUM", "MINIMUM", "ABS", "SQRT", "RSQRT", "EXP", "LOG", "SQUARE", "REVERSE_V2", "ZEROS_LIKE",
         "ONES_LIKE", "SHAPE", "RANGE"}
_CONTROL_FLOW = {"WHILE", "IF", "CALL", "CALL_ONCE"}
# Between a folded step and the layer it folds into: these keep the channel axis where it is.
_RESHAPES = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
# A selection step commutes with these (each acts per channel and is positively homogeneous).
_COMMUTING = _RESHAPES | {"RELU", "MAX_POOL_2D", "AVERAGE_POOL_2D"}
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_SAME, _VALID = 0, 1
# The options each op folding reads; an op of these without them is crafted (LiteRT would run it on defaults).
_OPTIONS = {"FULLY_CONNECTED": "FullyConnectedOptionsT", "CONV_2D": "Conv2DOptionsT",
            "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptionsT", "BATCH_MATMUL": "BatchMatMulOptionsT",
            "CONCATENATION": "ConcatenationOptionsT", "GATHER": "GatherOptionsT"}
# What may compute on the data between weight layers once folding is done: activations, pooling, reshapes and
# the (de)quantization of an integer model; each acts per position or per channel and reads one data tensor.
# Anything else that reads data (an ADD of two paths, a MUL by a constant not folded, a SUM, a TRANSPOSE) is a
# computation the base model's form does not have, and the chain would not describe what the file computes.
_BETWEEN = {"RELU", "RELU6", "RELU_N1_TO_1", "TANH", "LOGISTIC", "SOFTMAX", "LOG_SOFTMAX", "MAX_POOL_2D",
            "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE"}
# Ops that compute a shape from a shape (the converter's dynamic reshapes), harmless when only shapes read them.
_SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "SLICE", "PACK", "GATHER", "REDUCE_PROD", "CONCATENATION", "CAST", "FILL",
              "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
# Folding rescans the graph after each rewrite; a re-expressed base model has tens of ops, not hundreds.
MAX_OPS = 500


@dataclass(frozen=True)
class Layer:
    kind: str  # watermark.base.LAYER_KINDS
    kernel: np.ndarray  # Keras orientation, float64
    bias: np.ndarray
    reads: int  # the tensor holding the layer's input, to read on the probe
    number: str  # how its weights are stored: "float32", "float16" or "int8"


@dataclass(frozen=True)
class Folded:
    layers: list[Layer]
    notes: list[str]  # what was folded, for the evidence report


@dataclass
class _Node:
    op: str
    inputs: list[int]  # the tensors it reads that depend on the model's input
    outputs: list[int]
    activation: str = "NONE"
    kind: str | None = None  # a weight layer: its kind, kernel and bias
    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None
    geometry: tuple = ()  # a convolution's stride, padding and dilation: layers merge only when equal
    padding: int = _VALID
    number: str = "float32"
    scale: np.ndarray | None = None  # a MUL, ADD or SUB by a constant per channel: x * scale + shift
    shift: np.ndarray | None = None
    axis: int | None = None  # a CONCATENATION's
    select: np.ndarray | None = None  # a GATHER of channels: (input channels, output channels) of 0 and 1

    @property
    def pointwise(self) -> bool:
        """Acts on each position's channels alone: a dense layer, or a 1x1 convolution of stride 1."""
        if self.kind == "dense":
            return True
        return self.kind == "conv2d" and self.kernel.shape[:2] == (1, 1) and self.geometry[:2] == (1, 1)

    def matrix(self) -> np.ndarray:
        return self.kernel.reshape(self.kernel.shape[-2:]) if self.pointwise else self.kernel


def fold(interpreter, data: bytes) -> Folded:
    """The chain of weight layers `data` (a TFLite model the LiteRT `interpreter` was built from, with every
    tensor preserved and tensors allocated) computes, its re-expressions folded."""
    graph = _Graph(interpreter, data)
    notes: list[str] = []
    for _ in range(len(graph.nodes) + 1):
        if not (graph.as_dense(notes) or graph.forward(notes) or graph.backward(notes) or graph.merge(notes)):
            break
    return Folded(graph.chain(), notes)


class _Graph:
    def __init__(self, interpreter, data: bytes):
        from ai_edge_litert import schema_py_generated as schema

        self.interpreter = interpreter
        _run_once(interpreter)  # computed weights take their values, reshapes computed at run time their shapes
        self.details = {d["index"]: d for d in interpreter.get_tensor_details()}
        try:
            model = schema.ModelT.InitFromPackedBuf(data, 0)
            names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
            opcodes = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]
            subgraphs = [[(opcodes[op.opcodeIndex], op) for op in (g.operators or [])] for g in model.subgraphs]
            main = model.subgraphs[0]
            self.buffered = {i for i, t in enumerate(main.tensors or []) if _holds_data(model.buffers[t.buffer])}
            self.inputs, self.outputs = [int(t) for t in main.inputs], [int(t) for t in main.outputs]
        except Exception as error:  # flatbuffers raises many types on a malformed table
            raise UnreadableModel(f"the TFLite graph cannot be parsed ({type(error).__name__})") from None
        ops = subgraphs[0]
        if len(ops) > MAX_OPS:
            raise UnreadableModel(f"the model has {len(ops)} ops in its main graph, more than {MAX_OPS}")
        called = [n for n, others in enumerate(subgraphs[1:], start=1)
                  if any(name in WEIGHT_OPS or name == "BATCH_MATMUL" for name, _ in others)]
        if called:
            flow = sorted({name for name, _ in ops if name in _CONTROL_FLOW}) or ["no op of the main graph"]
            raise UnreadableModel(f"the model runs weight layers inside subgraph {called[0]} (called by "
                                  f"{', '.join(flow)}): only the main graph is folded to the base model's form")
        self.constant = self._constants(ops)
        self.dequantizes = {out: _tensors(op.inputs)[0] for name, op in ops if name == "DEQUANTIZE"
                            and len(_tensors(op.inputs)) == 1 for out in _tensors(op.outputs)}
        live = self._live(ops)
        self.nodes = [self._node(name, op) for index, (name, op) in enumerate(ops) if index in live]

    def _constants(self, ops) -> set[int]:
        """Tensors whose values follow from the file's constants alone."""
        constant = set(self.buffered) - set(self.inputs)
        for _ in range(len(ops) + 1):
            grown = False
            for name, op in ops:
                inputs, outputs = _tensors(op.inputs), _tensors(op.outputs)
                if name in _PURE and inputs and set(inputs) <= constant and not set(outputs) <= constant:
                    constant.update(outputs)
                    grown = True
            if not grown:
                return constant
        return constant

    def _live(self, ops) -> set[int]:
        """The ops whose results reach the model's outputs."""
        producer = {t: i for i, (_, op) in enumerate(ops) for t in _tensors(op.outputs)}
        live, pending = set(), list(self.outputs)
        while pending:
            index = producer.get(pending.pop())
            if index is not None and index not in live:
                live.add(index)
                pending += _tensors(ops[index][1].inputs)
        return live

    def value(self, tensor: int) -> tuple[np.ndarray, str]:
        """A constant tensor's value (dequantized) and how it is stored."""
        if tensor not in self.constant or tensor not in self.details:
            raise UnreadableModel("a weight layer's weights depend on the model's input or on its state")
        for _ in range(len(self.dequantizes)):  # the stored weights behind DEQUANTIZE ops (float16, int8)
            if tensor not in self.dequantizes:
                break
            tensor = self.dequantizes[tensor]
        if tensor not in self.details:
            raise UnreadableModel("a DEQUANTIZE op reads a tensor the model does not have")
        return dequantized(self.interpreter, self.details[tensor])

    def shape(self, tensor: int) -> tuple[int, ...]:
        detail = self.details.get(tensor)
        return tuple(int(d) for d in detail["shape"]) if detail is not None else ()

    def _node(self, name: str, op) -> _Node:
        inputs, outputs = [int(t) for t in (op.inputs if op.inputs is not None else [])], _tensors(op.outputs)
        options = op.builtinOptions
        expected = _OPTIONS.get(name)
        if expected is not None and type(options).__name__ != expected:
            raise UnreadableModel(f"a {name} op carries no {expected[:-1]} (a crafted graph)")
        activation = _ACTIVATIONS.get(getattr(options, "fusedActivationFunction", 0), "OTHER")
        data = [t for t in inputs if t >= 0 and t not in self.constant]
        if name in _RESHAPES or name == "SHAPE":  # a reshape's second input is its target shape, not data
            data = data[:1]
        node = _Node(name, data, outputs, activation)
        if name in WEIGHT_OPS or name == "BATCH_MATMUL":
            if len(inputs) < 2 or inputs[0] not in data or any(t in data for t in inputs[1:]):
                raise UnreadableModel(f"a {name} op multiplies by values that depend on the model's input (not "
                                      f"weights): not a form of the base model")
        if name == "FULLY_CONNECTED" and options.weightsFormat != 0:
            raise UnreadableModel("a FULLY_CONNECTED op stores its weights shuffled: not read")
        if name in WEIGHT_OPS:
            self._weights(node, inputs, options)
        elif name == "BATCH_MATMUL" and len(inputs) == 2 and not options.adjX:
            weights, number = self.value(inputs[1])
            if weights.ndim >= 2 and weights.size == np.prod(weights.shape[-2:]):
                weights = weights.reshape(weights.shape[-2:])
                node.kind, node.number, node.inputs = "dense", number, [inputs[0]]
                node.kernel = weights.T if options.adjY else weights
                node.bias = np.zeros(node.kernel.shape[1])
        elif name in ("MUL", "ADD", "SUB") and len(inputs) == 2 and len(data) == 1 and len(outputs) == 1:
            self._per_channel(node, inputs)
        elif name == "GATHER" and len(inputs) == 2 and data == inputs[:1] and inputs[1] in self.constant:
            self._gathered(node, inputs[1], options)
        if name == "CONCATENATION":
            node.axis = options.axis
        return node

    def _gathered(self, node: _Node, indices: int, options) -> None:
        """A GATHER of channels by constant indices: a selection step."""
        channels, rank = self.channels(node.inputs[0]), len(self.shape(node.inputs[0]))
        chosen = np.array(self.interpreter.get_tensor(indices))
        if options.axis not in (-1, rank - 1) or options.batchDims != 0 or chosen.ndim != 1 or not chosen.size \
                or np.any(chosen != np.round(chosen)) or np.any(chosen < 0) or np.any(chosen >= channels):
            return
        node.select = np.zeros((channels, chosen.size))
        node.select[chosen.astype(np.int64), np.arange(chosen.size)] = 1.0

    def _weights(self, node: _Node, inputs: list[int], options) -> None:
        if len(inputs) < 2 or inputs[1] < 0:
            raise UnreadableModel(f"a {node.op} op has no weight input")
        weights, number = self.value(inputs[1])
        node.kind = WEIGHT_OPS[node.op]
        node.kernel = _keras_orientation(node.kind, weights, self.shape(inputs[0]))
        out_channels = node.kernel.shape[-1] * (node.kernel.shape[2] if node.kind == "depthwise_conv2d" else 1)
        has_bias = len(inputs) > 2 and inputs[2] >= 0
        node.bias = self.value(inputs[2])[0].ravel() if has_bias else np.zeros(out_channels)
        if node.bias.size != out_channels:
            raise UnreadableModel(f"a {node.op} op's bias does not match its output channels")
        node.inputs, node.number = [inputs[0]], number
        if node.kind != "dense":
            node.geometry = (options.strideH, options.strideW, options.padding, options.dilationHFactor,
                             options.dilationWFactor)
            node.padding = options.padding

    def _per_channel(self, node: _Node, inputs: list[int]) -> None:
        """A MUL, ADD or SUB of the data by a constant that is one number or one per channel."""
        data = node.inputs[0]
        constant = inputs[1] if inputs[0] == data else inputs[0]
        if node.op == "SUB" and constant != inputs[1]:
            return
        channels = self.channels(data)
        value = self.value(constant)[0]
        if self.shape(node.outputs[0]) != self.shape(data) or value.size not in (1, channels) \
                or value.size != (value.shape[-1] if value.ndim else 1):
            return
        value = np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)
        node.scale = value if node.op == "MUL" else np.ones(channels)
        node.shift = {"MUL": np.zeros(channels), "ADD": value, "SUB": -value}[node.op]

    def producers_and_readers(self) -> tuple[dict[int, _Node], dict[int, list[_Node]]]:
        """Who produces each tensor, and who reads its values: not a SHAPE op, nor an op whose results only
        such ops read (the converter's reshape that feeds a shape computation)."""
        producer = {t: node for node in self.nodes for t in node.outputs}
        readers: dict[int, list[_Node]] = {}
        for node in self.nodes:
            for t in node.inputs:
                readers.setdefault(t, []).append(node)
        shape_only = self._shape_only(readers)
        return producer, {t: [r for r in found if id(r) not in shape_only] for t, found in readers.items()}

    def _shape_only(self, readers: dict[int, list[_Node]]) -> set[int]:
        """The ops (by id) whose results only shape computations read: SHAPE, and what feeds nothing but shapes
        (a live op no op reads as data feeds a reshape's target shape)."""
        shape_only: set[int] = set()
        for node in reversed(self.nodes):  # execution order: an op's readers come after it
            read = [r for t in node.outputs for r in readers.get(t, [])]
            if node.op == "SHAPE" or (node.kind is None and all(id(r) in shape_only for r in read)
                                      and not set(node.outputs) & set(self.outputs)):
                shape_only.add(id(node))
        return shape_only

    def is_float(self, tensor: int) -> bool:
        """A float tensor: an integer one clamps to its quantized range, so a step writing it is not linear."""
        detail = self.details.get(tensor)
        return detail is not None and np.issubdtype(detail["dtype"], np.floating)

    def channels(self, tensor: int) -> int:
        shape = self.shape(tensor)
        return shape[-1] if shape else 0

    def keeps_channels(self, node: _Node) -> bool:
        """A reshape that leaves the channel (last) axis as it is."""
        if node.op not in _RESHAPES or len(node.inputs) != 1 or len(node.outputs) != 1:
            return False
        before, after = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        return bool(before) and bool(after) and before[-1] == after[-1]

    def commutes(self, node: _Node) -> bool:
        """A selection step passes through this op unchanged (it acts per channel, positively homogeneously)."""
        if node.kind is not None or len(node.inputs) != 1 or len(node.outputs) != 1:
            return False
        if node.op in ("RELU", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
            return node.activation in ("NONE", "RELU")
        return self.keeps_channels(node)

    # rewrites: each returns True when it changed the graph

    def as_dense(self, notes: list[str]) -> bool:
        """A 1x1 convolution of an input of one position is a dense layer."""
        for node in self.nodes:
            if node.kind == "conv2d" and node.kernel.shape[:2] == (1, 1):
                shape = self.shape(node.inputs[0])
                if len(shape) == 2 or (len(shape) == 4 and shape[1:3] == (1, 1)):
                    node.kind, node.kernel, node.geometry, node.padding = "dense", node.kernel[0, 0], (), _VALID
                    notes.append("a 1x1 convolution of a single position read as the dense layer it is")
                    return True
        return False

    def forward(self, notes: list[str]) -> bool:
        """A linear step (a weight layer without activation, or a MUL/ADD by a constant per channel) whose only
        reader is a weight layer (through reshapes that keep the channels) folds into that layer."""
        _, readers = self.producers_and_readers()

        def only_reader(tensor: int) -> _Node | None:
            found = readers.get(tensor, [])
            return found[0] if len(found) == 1 and tensor not in self.outputs else None

        for step in self.nodes:
            linear = (step.kind in ("dense", "conv2d") or step.scale is not None) and step.activation == "NONE"
            if not linear or len(step.outputs) != 1 or not self.is_float(step.outputs[0]):
                continue
            tensor, between = step.outputs[0], []
            reader = only_reader(tensor)
            while reader is not None and self.keeps_channels(reader):
                between.append(reader)
                tensor = reader.outputs[0]
                reader = only_reader(tensor)
            if reader is None or reader.kind not in ("dense", "conv2d"):
                continue
            composed = _compose(step, reader)
            if composed is None:
                continue
            kernel, bias, template = composed
            merged = replace(template, kernel=kernel, bias=bias, inputs=list(step.inputs),
                             outputs=list(reader.outputs), activation=reader.activation,
                             number=_joined(step.number, reader.number))
            gone = [step, *between]
            self.nodes = [merged if node is reader else node for node in self.nodes
                          if not any(node is g for g in gone)]
            notes.append(f"a linear {step.op} step without activation folded into the {reader.op} after it")
            return True
        return False

    def backward(self, notes: list[str]) -> bool:
        """A selection step (each output channel one input channel times a positive factor, no bias) after a
        ReLU or pooling folds back into the weight layer before it."""
        producer, readers = self.producers_and_readers()
        for step in self.nodes:
            selective = step.select is not None or (step.op == "MUL" and step.scale is not None) or step.pointwise
            if not selective or step.activation not in ("NONE", "RELU") or len(step.inputs) != 1 \
                    or not self.is_float(step.outputs[0]):
                continue
            path, reader, tensor = [], step, step.inputs[0]
            source = producer.get(tensor)
            while readers.get(tensor) == [reader] and tensor not in self.outputs and source is not None \
                    and self.commutes(source):
                path.append(source)
                reader, tensor = source, source.inputs[0]
                source = producer.get(tensor)
            if readers.get(tensor) != [reader] or tensor in self.outputs or source is None \
                    or source.kind not in ("dense", "conv2d") or source.activation not in ("NONE", "RELU") \
                    or len(source.outputs) != 1 or source.kernel.shape[-1] != self.channels(step.inputs[0]):
                continue
            selection = _selection(step, self.channels(step.inputs[0]))
            if selection is None:
                continue
            source.kernel = source.kernel @ selection
            source.bias = source.bias @ selection
            if step.activation == "RELU" and not any(p.op == "RELU" or p.activation == "RELU" for p in path):
                source.activation = "RELU"
            (path[0] if path else source).outputs = list(step.outputs)
            self.nodes = [node for node in self.nodes if node is not step]
            notes.append(f"a {step.op} step selecting and rescaling channels (an identity, a permutation, a "
                         f"rescaling) folded into the {source.op} before it")
            return True
        return False

    def merge(self, notes: list[str]) -> bool:
        """Weight layers reading one tensor, concatenated on the channel axis, are one layer split in parts."""
        producer, readers = self.producers_and_readers()
        for concat in self.nodes:
            if concat.op != "CONCATENATION" or concat.activation != "NONE" or len(concat.inputs) < 2 \
                    or len(concat.outputs) != 1 or len(set(concat.inputs)) != len(concat.inputs):
                continue
            if concat.axis not in (-1, len(self.shape(concat.outputs[0])) - 1):
                continue
            traced = [self._through_reshapes(t, concat, producer, readers) for t in concat.inputs]
            if any(t is None for t in traced):
                continue
            parts, between = [part for part, _ in traced], [node for _, path in traced for node in path]
            first = parts[0]
            if not all(self.is_float(t) for t in concat.inputs) or any(p.inputs != first.inputs or p.kind != first.kind or p.geometry != first.geometry
                   or p.activation != first.activation or p.kernel.shape[:-1] != first.kernel.shape[:-1]
                   for p in parts):
                continue
            merged = replace(first, kernel=np.concatenate([p.kernel for p in parts], axis=-1),
                             bias=np.concatenate([p.bias for p in parts]), outputs=list(concat.outputs),
                             number=_joined(*(p.number for p in parts)))
            self.nodes = [merged if node is concat else node for node in self.nodes
                          if not any(node is p for p in parts + between)]
            notes.append(f"{len(parts)} {first.op} layers reading one input, concatenated, merged into one")
            return True
        return False

    def _through_reshapes(self, tensor: int, reader: _Node, producer, readers):
        """The weight layer (dense or conv2d) whose output `tensor` is, through reshapes that keep the
        channels, each read by the next alone; with those reshapes. None if there is no such layer."""
        path: list[_Node] = []
        for _ in range(len(self.nodes)):
            source = producer.get(tensor)
            if source is None or readers.get(tensor) != [reader] or tensor in self.outputs:
                return None
            if source.kind in ("dense", "conv2d"):
                return source, path
            if not self.keeps_channels(source):
                return None
            path.append(source)
            reader, tensor = source, source.inputs[0]
        return None

    def chain(self) -> list[Layer]:
        """The weight layers in order, each reading what exactly the previous one produced."""
        layers = [node for node in self.nodes if node.kind is not None]
        if not layers:
            raise UnreadableModel("the TFLite model has no fully-connected or convolution layers")
        producer, _ = self.producers_and_readers()
        shape_only = self._shape_only({t: [n for n in self.nodes if t in n.inputs] for t in producer})
        for node in self.nodes:
            if node.kind is not None or not node.inputs:
                continue
            if id(node) in shape_only:
                if node.op not in _SHAPE_OPS:
                    raise UnreadableModel(f"an op {node.op} computes a shape from the data: not a form of the base "
                                          f"model")
            elif node.op not in _BETWEEN or len(node.inputs) != 1:
                raise UnreadableModel(f"an op {node.op} computes on the data between the weight layers (reading "
                                      f"{len(node.inputs)} data tensors): the graph cannot be folded to the base "
                                      f"model's chain of layers")
        position = {id(node): n for n, node in enumerate(layers)}
        position_of_input = -1  # the model's input, as if a layer before the first

        def nearest(tensor: int) -> set[int]:
            """The weight layers (by position) the tensor is computed from, with no weight layer between."""
            found, seen, pending = set(), set(), [tensor]
            while pending:
                current = pending.pop()
                node = producer.get(current)
                if current in seen:
                    continue
                seen.add(current)
                if node is None:  # the model's input, or a tensor nothing computes (a variable): never a layer
                    found.add(position_of_input if current in self.inputs else -2)
                elif node.kind is not None:
                    found.add(position[id(node)])
                else:
                    pending += node.inputs
            return found

        for n, layer in enumerate(layers):
            if nearest(layer.inputs[0]) != {n - 1}:
                raise UnreadableModel(f"weight layer {n + 1} does not read the output of the layer before it "
                                      f"alone (a branch or a skip connection): the graph cannot be folded to the "
                                      f"base model's chain of layers")
        if any(nearest(output) != {len(layers) - 1} for output in self.outputs):
            raise UnreadableModel("the model's output does not come from its last weight layer alone (a branch "
                                  "or a skip connection): the graph cannot be folded to the base model's chain")
        return [Layer(node.kind, node.kernel, node.bias, node.inputs[0], node.number) for node in layers]


def _compose(step: _Node, reader: _Node) -> tuple[np.ndarray, np.ndarray, _Node] | None:
    """The kernel and bias of `step` then `reader`, and the node whose kind and geometry they keep; None when
    the two do not compose into one layer exactly."""
    if reader.kind == "depthwise_conv2d":
        return None
    kernel = reader.kernel  # (..., m, out)
    taps = kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0)  # (m, out): what a constant input adds
    # a constant added before a padded convolution is missing at the borders, where the padding reads zeros
    exact_shift = reader.pointwise or reader.padding == _VALID
    if step.scale is not None:
        m = kernel.shape[-2]
        scale = np.broadcast_to(step.scale, (m,)) if step.scale.size in (1, m) else None
        shift = np.broadcast_to(step.shift, (m,)) if step.shift.size in (1, m) else None
        if scale is None or shift is None or (np.any(shift != 0) and not exact_shift):
            return None
        return kernel * scale[:, None], reader.bias + shift @ taps, reader
    if step.pointwise:
        matrix = step.matrix()  # (in, m)
        if matrix.shape[1] != kernel.shape[-2] or (np.any(step.bias != 0) and not exact_shift):
            return None
        return np.einsum("im,...mo->...io", matrix, kernel), reader.bias + step.bias @ taps, reader
    if reader.pointwise:
        matrix = reader.matrix()
        if step.kernel.shape[-1] != matrix.shape[0]:
            return None
        return np.einsum("...im,mo->...io", step.kernel, matrix), reader.bias + step.bias @ matrix, step
    return None


def _selection(step: _Node, channels: int) -> np.ndarray | None:
    """The (m, k) matrix of a step that makes each of its k output channels one of its m input channels times a
    positive factor, with no bias: a pointwise weight layer of that form (every other entry exactly zero), a
    GATHER of channels, or a MUL by a positive constant."""
    if step.select is not None:
        return step.select if step.select.shape[0] == channels else None
    if step.scale is not None:
        if step.op != "MUL" or channels <= 0 or np.any(step.scale <= 0) or not np.all(np.isfinite(step.scale)):
            return None
        return np.diag(np.broadcast_to(step.scale, (channels,)))
    if step.kind is None or not step.pointwise:
        return None
    matrix = step.matrix()
    if np.any(step.bias != 0) or not np.all(np.isfinite(matrix)):
        return None
    if np.any(matrix < 0) or np.any((matrix > 0).sum(axis=0) != 1):
        return None
    return matrix


def _joined(*numbers: str) -> str:
    """How a folded layer's weights were stored: the coarsest of its parts'."""
    for number in ("int8", "float16"):
        if number in numbers:
            return number
    return "float32"


def _keras_orientation(kind: str, weights: np.ndarray, source_shape: tuple[int, ...]) -> np.ndarray:
    """TFLite's weight layout to Keras's: FULLY_CONNECTED (out, in), CONV_2D (out, kh, kw, in),
    DEPTHWISE_CONV_2D (1, kh, kw, in x multiplier), its input's channels telling the multiplier."""
    want = {"dense": 2, "conv2d": 4, "depthwise_conv2d": 4}[kind]
    if weights.ndim != want or 0 in weights.shape:
        raise UnreadableModel(f"a {kind} weight tensor has {weights.ndim} dimensions, not {want}")
    if kind == "dense":
        return weights.T
    if kind == "conv2d":
        return weights.transpose(1, 2, 3, 0)
    in_channels = source_shape[-1] if source_shape else 0
    if weights.shape[0] != 1 or in_channels <= 0 or weights.shape[3] % in_channels:
        raise UnreadableModel("a depthwise convolution's weights do not match its input's channels")
    return weights[0].reshape(weights.shape[1], weights.shape[2], in_channels, weights.shape[3] // in_channels)


def dequantized(interpreter, detail: dict) -> tuple[np.ndarray, str]:
    """A weight tensor's values as float64 (an integer one dequantized with its scales and zero points, per
    channel where it has them) and how it is stored: "float32", "float16" or "int8"."""
    try:
        raw = np.array(interpreter.get_tensor(detail["index"]))
    except ValueError:
        raise UnreadableModel("a weight tensor of the model holds no data (truncated or not constant)") from None
    if raw.dtype in (np.float32, np.float64):
        return raw.astype(np.float64), "float32"
    if raw.dtype == np.float16:
        return raw.astype(np.float64), "float16"
    if raw.dtype in (np.int8, np.uint8, np.int32):  # int32: the biases of a full-integer model
        q = detail["quantization_parameters"]
        scales, zero_points = np.asarray(q["scales"], np.float64), np.asarray(q["zero_points"], np.float64)
        if scales.size == 0:
            raise UnreadableModel("an integer weight tensor has no quantization scale")
        shape = [1] * raw.ndim
        if scales.size > 1:
            dimension = int(q["quantized_dimension"])
            if not (0 <= dimension < raw.ndim and raw.shape[dimension] == scales.size):
                raise UnreadableModel("an integer weight tensor's scales do not match its quantized dimension")
            shape[dimension] = scales.size
        if zero_points.size not in (1, scales.size):
            raise UnreadableModel("an integer weight tensor's zero points do not match its scales")
        offsets = zero_points.reshape(shape) if zero_points.size > 1 else zero_points[0]
        return (raw.astype(np.float64) - offsets) * scales.reshape(shape), "int8"
    raise UnreadableModel(f"weights of type {raw.dtype} are not supported")


def _run_once(interpreter) -> None:
    """Run the model once, on zeros."""
    try:
        for entry in interpreter.get_input_details():
            interpreter.set_tensor(entry["index"], np.zeros(entry["shape"], entry["dtype"]))
        interpreter.invoke()
    except (ValueError, RuntimeError) as error:
        raise UnreadableModel(f"the model cannot run ({first_line(error)})") from None


def _tensors(indices) -> list[int]:
    """An op's tensor list, without the -1 of an absent optional input."""
    return [int(t) for t in (indices if indices is not None else []) if t >= 0]


def _holds_data(buffer) -> bool:
    """A buffer holds a constant inline, or (a model over 2 GB) at an offset past the flatbuffer."""
    return (buffer.data is not None and len(buffer.data) > 0) or (buffer.offset > 1 and buffer.size > 0)


def first_line(error: Exception) -> str:
    """An error's first line, at most 200 characters: enough to say what failed, never a dump."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
