"""Tiny `transformers` models built from configs (hidden size 32, 2 layers, random weights;
nothing is downloaded), shared by the tests that need a real architecture of a family."""

from __future__ import annotations

import torch

__all__ = [
    "SEQUENCE",
    "TEXT",
    "VISION",
    "VOCABULARY",
    "bert_classifier",
    "padded_mask",
    "swin_classifier",
    "t5_encoder",
    "vit_classifier",
    "wav2vec2",
    "whisper_encoder",
]

SEQUENCE = 16
VOCABULARY = 100
# The one small text encoder and vision transformer config (the conversion corpus uses them too).
TEXT = {
    "vocab_size": VOCABULARY,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
VISION = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def bert_classifier() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    import transformers

    config = transformers.BertConfig(**TEXT, num_labels=3)
    torch.manual_seed(0)
    module = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(1, config.vocab_size, (1, SEQUENCE))
    return module, {"input_ids": ids, "attention_mask": padded_mask(12)}


def bert_encoder() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A BERT encoder taking ids, a mask and token type ids (a sentence pair's segments)."""
    import transformers

    config = transformers.BertConfig(**TEXT)
    torch.manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (1, SEQUENCE))
    types = torch.zeros(1, SEQUENCE, dtype=torch.int64)
    types[:, 6:12] = 1
    inputs = {"input_ids": ids, "attention_mask": padded_mask(12), "token_type_ids": types}
    return transformers.BertModel(config).eval(), inputs


def padded_mask(length: int) -> torch.Tensor:
    """A real attention mask: `length` tokens, then padding."""
    mask = torch.ones(1, SEQUENCE, dtype=torch.int64)
    mask[:, length:] = 0
    return mask


def vit_classifier() -> tuple[torch.nn.Module, torch.Tensor]:
    import transformers

    config = transformers.ViTConfig(**VISION, num_labels=5)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval(), torch.randn(1, 3, 32, 32)


def whisper_encoder() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    import transformers
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = transformers.WhisperConfig(
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        max_source_positions=16,  # 32 input frames: the convolutions halve them
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    return WhisperEncoder(config).eval(), {"input_features": torch.randn(1, 16, 32)}


def wav2vec2(samples: int = 800) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A Wav2Vec2 CTC head over `samples` raw audio samples (two strided convolutions)."""
    import transformers

    config = transformers.Wav2Vec2Config(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
    )
    torch.manual_seed(0)
    module = transformers.Wav2Vec2ForCTC(config).eval()
    return module, {"input_values": torch.randn(1, samples)}


def t5_encoder() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A T5 encoder: torch.onnx's dynamo exporter fails on it (a view of a non-contiguous
    tensor), so the TorchScript exporter writes its ONNX file."""
    import transformers

    config = transformers.T5Config(
        vocab_size=VOCABULARY, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2
    )
    torch.manual_seed(0)
    ids = torch.randint(0, VOCABULARY, (1, SEQUENCE))
    inputs = {"input_ids": ids, "attention_mask": padded_mask(12)}
    return transformers.T5EncoderModel(config).eval(), inputs


def swin_classifier() -> tuple[torch.nn.Module, torch.Tensor]:
    """A two-stage Swin: torch.onnx's dynamo exporter fails on it too, and after the
    TorchScript exporter has traced it, torch.export cannot (a data-dependent guard in the
    patch merging)."""
    import transformers

    config = transformers.SwinConfig(
        image_size=16,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=2,
        num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.SwinForImageClassification(config).eval(), torch.randn(1, 3, 16, 16)
