"""A LLaMA-style tokenizer built locally with ``tokenizers`` (no hub): BPE over a Metaspace
pre-tokeniser (punctuation and newlines kept apart from words), ``<unk>``=0, ``<s>``=1, ``</s>``=2, BOS added in front, saved as a normal HF folder."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<s>", "</s>"]
_BASE_TEXT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions. "
    "USER: ASSISTANT: What is shown in the image? Answer the question using a single word or phrase. "
    "Answer with the option's letter from the given choices directly. Yes No yes no "
    "0 1 2 3 4 5 6 7 8 9 A B C D E F G H I J K L M N O P Q R S T U V W X Y Z "
    "a b c d e f g h i j k l m n o p q r s t u v w x y z . , ? ! : ; ' \" ( ) - \n"
)


def train_word_bpe(base_text: str, texts: Iterable[str], vocab_size: int, specials: list,
                   unk_token: str | None) -> Tokenizer:
    """A BPE over Metaspace words, trained offline on ``base_text`` + ``texts``; ``specials`` get the first ids.

    Words never fuse with punctuation or newlines (as in LLaMA's vocabulary): without this, a BPE
    trained on templated text learns tokens like "▁cross?\nAnswer", so a word would be a different
    token at the end of a question than elsewhere."""
    tok = Tokenizer(models.BPE(unk_token=unk_token, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=sorted(set(base_text)) + ["▁"])
    tok.train_from_iterator([base_text, *texts], trainer=trainer)
    return tok


def build_tokenizer(texts: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = train_word_bpe(_BASE_TEXT, texts, vocab_size, SPECIALS, "<unk>")
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>", model_max_length=2048, padding_side="right")
    return fast
