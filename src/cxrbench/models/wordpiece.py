"""A deterministic WordPiece vocabulary learned from the corpus, wrapped as a BERT tokenizer.

Greedy pair merging as the ``tokenizers`` WordPiece trainer does, written out so that the same
texts always give the same vocabulary: the special tokens first (ids 0-4), then every character
(and its ``##`` form) of the words and of ASCII, then merges of the most frequent adjacent pair
(ties: the smallest pair) until the vocabulary is full or no pair occurs ``MIN_MERGE_COUNT`` times.
"""

from __future__ import annotations

import heapq
import itertools
import string
from collections import Counter, defaultdict
from typing import Any

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation
MIN_MERGE_COUNT = 2


def _merge(pieces: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    """``pieces`` with every left-to-right occurrence of ``pair`` replaced by ``merged``."""
    out: list[str] = []
    i = 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out


def learn_wordpiece_vocab(words: Counter[str], vocab_size: int) -> list[str]:
    """WordPiece vocabulary by greedy pair merging (as ``tokenizers``' trainer), deterministic.

    Start: the special tokens, then every character (and its ``##`` form) of the words and of
    ASCII; then repeatedly merge the most frequent adjacent pair (ties: smallest pair) until
    ``vocab_size`` tokens or no pair occurs ``MIN_MERGE_COUNT`` times.
    """
    chars = set(ALPHABET).union(*words)
    vocab = [*SPECIAL_TOKENS, *sorted(chars), *sorted(f"##{c}" for c in chars)]
    known = set(vocab)
    entries = sorted(words.items())
    pieces = [[w[0], *(f"##{c}" for c in w[1:])] for w, _ in entries]
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, (symbols, (_, n)) in enumerate(zip(pieces, entries, strict=True)):
        for pair in itertools.pairwise(symbols):
            pairs[pair] += n
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    while heap and len(vocab) < vocab_size:
        count, pair = heapq.heappop(heap)
        if -count != pairs[pair]:
            continue  # stale entry
        if -count < MIN_MERGE_COUNT:
            break
        merged = pair[0] + pair[1].removeprefix("##")
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        for i in sorted(where.pop(pair)):
            old, new, n = pieces[i], _merge(pieces[i], pair, merged), entries[i][1]
            for p in itertools.pairwise(old):
                pairs[p] -= n
            for p in itertools.pairwise(new):
                pairs[p] += n
                where[p].add(i)
                heapq.heappush(heap, (-pairs[p], p))
            pieces[i] = new
    return vocab


def build_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    """Learn a WordPiece vocabulary on ``texts``; return a ``transformers`` fast BERT tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = {token: i for i, token in enumerate(learn_wordpiece_vocab(words, vocab_size))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer = normalizer, pre_tokenizer
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return BertTokenizerFast(
        tokenizer_object=backend, do_lower_case=True, model_max_length=max_length
    )
