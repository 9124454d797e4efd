"""On-policy distillation of a causal LM: SmolLM2-135M teaches a small Llama on its own samples.

Each step, half of the batch keeps its text (BBC News articles) and half is replaced by the
student's own sampled continuation of the block's first tokens; the loss is the exact per-token
backward KL, KL(student || teacher), over the whole vocabulary at every target position
(generalised on-policy distillation). Reports the student's held-out perplexity and teacher_kl,
KL(teacher || student) per token.

Needs, once: `ktransfer data prepare bbc-news && ktransfer data prepare smollm2`.

    python examples/on_policy_causal_lm.py                       # 100 steps: minutes on 2 CPU cores
    python examples/on_policy_causal_lm.py --steps 2 --new-tokens 8 --out runs/quick_onpolicy
"""

from __future__ import annotations

import argparse
from typing import Any

from ktransfer import RunConfig, evaluate_run, run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens the student samples per continuation")
    parser.add_argument("--student-fraction", type=float, default=0.5, help="share of examples with sampled targets")
    parser.add_argument("--out", default="runs/on_policy_causal_lm")
    args = parser.parse_args(argv)
    prompt = 8

    config = RunConfig.from_dict({
        "task": "causal_lm",
        "data": {"name": "bbc_news_text", "max_length": prompt + args.new_tokens, "prompt_length": prompt,
                 "val_size": 32, "test_size": 64},
        "teacher": {"builder": "smollm2"},
        "student": {"builder": "llama_student", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2},
        "targets": {"sources": {"dataset": 1.0 - args.student_fraction, "student": args.student_fraction},
                    "generation": {"max_new_tokens": args.new_tokens, "do_sample": True, "temperature": 1.0}},
        "knowledge": [{"type": "on_policy", "divergence": "backward_kl", "sources": None, "chunk_size": 1024}],
        "optim": {"lr": 0.002},
        "schedule": {"name": "cosine", "warmup_steps": min(10, args.steps // 10)},
        "train": {"max_steps": args.steps, "batch_size": 8, "eval_batch_size": 32,
                  "eval_every": max(1, args.steps // 4), "log_every": max(1, min(10, args.steps)),
                  "metric": "perplexity"},
    })
    run(config, args.out, overwrite=True, progress=False)
    test = evaluate_run(args.out, split="test")
    print(f"test perplexity {test['perplexity']:.1f}, KL(teacher || student) per token {test['teacher_kl']:.3f}")
    return test


if __name__ == "__main__":
    main()
