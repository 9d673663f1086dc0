"""Tiny models and files the tests build themselves."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def onnx_mlp(path: Path | None = None, sizes: tuple[int, ...] = (64, 256, 256, 10), seed: int = 0,
             gemm: bool = False) -> bytes:
    """A float32 MLP ``x[batch, 64] -> logits[batch, 10]`` with random weights (MatMul+Add, or Gemm)."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        last = i == len(sizes) - 2
        out = "logits" if last else f"h{i}"
        pre = f"pre{i}" if not last else out
        if gemm:
            inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [pre], transB=1, name=f"fc{i}"))
        else:
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [pre], name=f"add{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [pre], [out], name=f"relu{i}"))
        current = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if path is not None:
        path.write_bytes(data)
    return data


def onnx_endless_loop(trips: int = 2**62) -> bytes:
    """``x[batch, 4] -> y``: a ``Loop`` that adds 1 ``trips`` times — a model that keeps ONNX Runtime busy in
    native code, where no cooperative check can stop it."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(data_or_path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    source = data_or_path if isinstance(data_or_path, bytes) else str(data_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def pickle_bytes() -> bytes:
    import pickle

    return pickle.dumps({"weights": [1.0, 2.0]})


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# ?inputs= for uploading the digits CNN as TorchScript
CNN_INPUTS = quote(json.dumps([{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]))


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as float32 [N, 1, 8, 8] in 0..1, split 80/20 (train, test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def digits_cnn(epochs: int = 30, seed: int = 0):
    """A small CNN trained on the digits (≈0.99 test accuracy in a few seconds); returns (model, example)."""
    from torch import nn

    return _train_digits(lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10)), epochs, seed)


def digits_mlp(epochs: int = 30, seed: int = 0):
    """An MLP 64→256→256→10 over the flattened digits; returns (model, example)."""
    from torch import nn

    return _train_digits(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                                               nn.ReLU(), nn.Linear(256, 10)), epochs, seed)


def _train_digits(build, epochs: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = build()
    x_train, y_train, _, _ = digits()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for start in range(0, len(x), 128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[start:start + 128]), y[start:start + 128]).backward()
            optimizer.step()
    return model.eval(), x[:2]


def torchscript_bytes(model, example) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, example), buffer)
    return buffer.getvalue()


def pt2_bytes(model, example) -> bytes:
    import torch

    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1,
                                                                                             max=4096)},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def onnx_zip_bytes(data: bytes, escape: str | None = None) -> bytes:
    """The given ONNX model with its weights moved to an external-data file, zipped in a folder.
    ``escape`` rewrites every external-data location (e.g. to ``../outside.bin``)."""
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load_from_string(data)
        onnx.save(model, f"{tmp}/model.onnx", save_as_external_data=True, location="weights.bin",
                  size_threshold=0)
        if escape:
            model = onnx.load(f"{tmp}/model.onnx", load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = escape
            onnx.save(model, f"{tmp}/model.onnx")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(f"{tmp}/model.onnx", "net/model.onnx")
            archive.write(f"{tmp}/weights.bin", "net/weights.bin")
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def onnx_from_torch(model, example, input_name: str = "input", output_name: str = "output") -> bytes:
    """ONNX bytes of a torch module (TorchScript exporter, opset 17, dynamic batch)."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.onnx"
        torch.onnx.export(model, (example,), path, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, opset_version=17,
                          dynamo=False)
        return Path(path).read_bytes()


def tiny_transformer(vocab: int = 100, dim: int = 64, heads: int = 4, layers: int = 2, seed: int = 0):
    """A small BERT-like encoder over token ids [batch, 16] → mean-pooled embeddings [batch, dim]."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            attention = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1)
            x = self.norm1(x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, dim)))
            return self.norm2(x + self.down(nn.functional.gelu(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))

        def forward(self, input_ids):
            x = self.embed(input_ids)
            for block in self.blocks:
                x = block(x)
            return x.mean(dim=1)

    torch.manual_seed(seed)
    return Encoder().eval(), torch.randint(0, vocab, (2, 16))


def residual_mlp(seed: int = 0):
    """An MLP with two residual blocks: x[batch, 64] → 128 → (128 + block) × 2 → 10."""
    import torch
    from torch import nn

    class ResidualMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.out = nn.Linear(64, 128), nn.Linear(128, 10)
            self.a1, self.a2, self.b1, self.b2 = nn.Linear(128, 256), nn.Linear(256, 128), nn.Linear(128, 256), \
                nn.Linear(256, 128)

        def forward(self, x):
            h = torch.relu(self.inp(x))
            h = h + self.a2(torch.relu(self.a1(h)))
            h = h + self.b2(torch.relu(self.b1(h)))
            return self.out(h)

    torch.manual_seed(seed)
    return ResidualMLP().eval(), torch.randn(2, 64)


def bert_like(vocab: int = 100, dim: int = 64, heads: int = 8, layers: int = 2, seed: int = 0):
    """An encoder in Hugging Face BERT's shape: separate query/key/value projections viewed into heads, an
    additive attention mask, output projection + residual + LayerNorm, GELU feed-forward. Token ids
    [batch, 16] and a mask [batch, 16] → mean-pooled embeddings [batch, dim]."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.output, self.norm = nn.Linear(dim, dim), nn.LayerNorm(dim)

        def split(self, x):
            b, t, _ = x.shape
            return x.view(b, t, heads, dim // heads).transpose(1, 2)

        def forward(self, x, bias):
            q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (dim // heads) ** 0.5 + bias
            context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
            b, t = context.shape[:2]
            return self.norm(x + self.output(context.reshape(b, t, dim)))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = Attention()
            self.up, self.down, self.norm = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), nn.LayerNorm(dim)

        def forward(self, x, bias):
            x = self.attention(x, bias)
            return self.norm(x + self.down(nn.functional.gelu(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            bias = (1.0 - attention_mask[:, None, None, :].float()) * -1e4
            x = self.embed(input_ids)
            for layer in self.layers:
                x = layer(x, bias)
            return x.mean(dim=1)

    torch.manual_seed(seed)
    return Encoder().eval(), (torch.randint(0, vocab, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
