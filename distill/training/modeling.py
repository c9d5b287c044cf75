"""The model and tokenizer a student starts from: a fresh `tiny` GPT-2, or a pretrained (or GGUF) checkpoint.

The `tiny` preset builds a GPT-2-architecture model from a config, sized by the `tiny_*` fields of
`TrainConfig`, with its vocabulary fitted to a number tokenizer trained on the rows (see
`distill.training.tokenization`) and, by default, Fourier features of each whole number's value in that
number's embedding. A pretrained checkpoint is loaded with `dd_prompting.model_loading.load_pretrained`
(a missing model is one sentence; a GGUF one is read from its dequantised float32 copy, made once),
so that it can be trained and saved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dd_prompting.distill.training.tokenization import train_number_tokenizer
from dd_prompting.distill.training.train_config import TrainConfig

from dd_prompting.model_loading import check_model_available, load_pretrained

__all__ = ["build_tiny_model", "load_model_and_tokenizer"]


def build_tiny_model(tokenizer, config: TrainConfig):
    """A GPT-2-architecture model sized by the `tiny_*` fields, its vocabulary fitted to `tokenizer`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    eos = tokenizer.eos_token_id
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.max_length,
        n_embd=config.tiny_hidden,
        n_layer=config.tiny_layers,
        n_head=config.tiny_heads,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        activation_function=config.tiny_activation,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(model_config)
    if config.tiny_number_init == "fourier":
        _init_number_embeddings(model, tokenizer, scale=config.tiny_number_scale)
    if config.tiny_position_init == "sinusoidal":
        _init_position_embeddings(model, scale=config.tiny_position_scale)
    return model


def _init_position_embeddings(model, *, scale: float) -> None:
    """Start GPT-2's learned position table as the Transformer's sinusoids (Vaswani et al., 2017).

    The embedding of position p + k is then a fixed rotation of that of p, so "attend to the token
    k back" (where an equation's operands are) is one query/key map at every position, instead of
    something a randomly initialised table has to learn position by position.
    """
    import torch

    weight = model.transformer.wpe.weight
    positions, width = weight.shape
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(0, width, 2, dtype=torch.float32) / width)
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * frequencies[None, :]
    with torch.no_grad():
        weight[:, 0::2] = scale * torch.sin(angles)
        weight[:, 1::2] = scale * torch.cos(angles)


_NUMBER_PERIODS = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 10000)


def _init_number_embeddings(model, tokenizer, *, scale: float) -> list[int]:
    """Start each whole-number token's embedding with Fourier features of its value; returns their rows.

    Dimensions 2i and 2i+1 of the embedding of n hold scale * cos/sin(2 pi n / T_i) over periods T_i from
    2 to 10,000; the rest stay random. With tied input/output embeddings this hands the model a
    representation in which adding numbers is rotating angles (the circuit small transformers find
    for modular addition), rather than leaving it to discover one from scratch.
    """
    import torch

    weight = model.get_input_embeddings().weight
    width = 2 * len(_NUMBER_PERIODS)
    if weight.shape[1] < 2 * width:
        return []
    periods = torch.tensor(_NUMBER_PERIODS, dtype=torch.float32)
    rows = []
    with torch.no_grad():
        for token, index in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([token]).strip()
            if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
                continue
            angles = 2 * math.pi * int(text) / periods
            weight[index, 0:width:2] = scale * torch.cos(angles)
            weight[index, 1:width:2] = scale * torch.sin(angles)
            rows.append(index)
    return rows


def load_model_and_tokenizer(config: TrainConfig, *, texts: Sequence[str] = (), tokenizer_dir: str | Path | None = None):
    """The model and tokenizer to train: a fresh `tiny` GPT-2, or a pretrained checkpoint.

    For `tiny`, the tokenizer is loaded from `tokenizer_dir` when given (a resumed run must reuse
    its vocabulary), else trained on `texts`. A pretrained tokenizer without a pad token pads with EOS.
    A GGUF checkpoint is read from its dequantised float32 copy, so it can be trained and saved.
    """
    import torch
    from transformers import AutoTokenizer

    if config.is_tiny:
        if tokenizer_dir is not None:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        else:
            if not texts:
                raise ValueError("The 'tiny' preset trains its tokenizer on the rows; got no texts.")
            tokenizer = train_number_tokenizer(texts, vocab_size=config.tiny_vocab_size, max_number=config.tiny_max_number)
        return build_tiny_model(tokenizer, config), tokenizer

    if config.load_in_4bit:
        check_model_available(config.model)
        tokenizer = _with_pad_token(AutoTokenizer.from_pretrained(config.tokenizer or config.model), config)
        return _load_in_4bit(config), tokenizer
    # One loader for every pretrained model: a missing one fails in one sentence, a GGUF one is read from its
    # dequantised copy (made once, in dd_prompting's cache).
    model, tokenizer = load_pretrained(config.model, gguf_file=config.gguf_file, tokenizer_name_or_path=config.tokenizer,
                                       torch_dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model = _dequantized_copy(model)
    return model, _with_pad_token(tokenizer, config)


def _with_pad_token(tokenizer, config: TrainConfig):
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer of {config.model!r} has no EOS token; students need one to end completions.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_in_4bit(config: TrainConfig):
    """The base model with its linear weights in NF4 (QLoRA, Dettmers et al. 2023), ready for adapters."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import is_bitsandbytes_available

    if not is_bitsandbytes_available():
        raise ImportError("TrainConfig.load_in_4bit needs bitsandbytes: pip install 'dd-prompting[qlora]'")
    from peft import prepare_model_for_kbit_training

    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)
    # Under torchrun / accelerate each process holds its own copy on its own device.
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(config.model, quantization_config=quantization, dtype=compute,
                                                 device_map={"": device})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _dequantized_copy(model):
    # A GGUF checkpoint loads with its weights already in float32, but flagged as quantized, which the
    # Trainer refuses to fine-tune and save_pretrained refuses to write: copy it into a plain model.
    model_config = model.config
    if hasattr(model_config, "quantization_config"):
        del model_config.quantization_config
    plain = type(model)(model_config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def add_lora_adapters(model, config: TrainConfig):
    """`model` with LoRA adapters (peft) of rank `config.lora_r`: only the adapters will train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("TrainConfig.lora_r > 0 needs peft: pip install 'dd-prompting[lora]'") from err

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def merged(model, config: TrainConfig | None = None):
    """A trained model as plain transformers weights: LoRA adapters merged in (other models as they are).

    Adapters trained on 4-bit weights (QLoRA) are merged into the base model reloaded in full
    precision, so the student is a plain float32 checkpoint rather than re-rounded 4-bit weights.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    if config is not None and config.load_in_4bit:
        import torch
        from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
        full = PeftModel(base, model.peft_config["default"])
        set_peft_model_state_dict(full, {name: value.float().cpu()
                                         for name, value in get_peft_model_state_dict(model).items()})
        return full.merge_and_unload()
    return model.merge_and_unload()
