"""One thread, fixed seed (shared with tests/losses and tests/tasks); a small random Hugging Face BERT directory."""

import pytest

from torch_fixtures import _frugal_torch  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def random_bert_dir(tmp_path_factory):
    """(directory, model): a 2-layer, 64-wide `transformers` BERT with random weights, saved as a Hugging Face
    model directory (config.json + model.safetensors)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(5)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    ref = BertModel(cfg).eval()
    path = tmp_path_factory.mktemp("bert")
    ref.save_pretrained(path)
    return path, ref
