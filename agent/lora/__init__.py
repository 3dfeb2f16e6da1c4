"""The LoRA fallback: distil the teacher into a PEFT adapter on the target when prompting plateaus.

    data.py           training rows (teacher answers, discriminated synthetic inputs, general mix)
    discriminator.py  real-vs-synthetic inputs on MiniLM embeddings
    train.py          in-process PEFT training with a step and time budget, checkpoints, resume
    gguf.py           PEFT adapter -> llama.cpp adapter.gguf
    openai_ft.py      chat fine-tuning JSONL (validated) and provider submission, for remote targets
    evaluate.py       the adapter scored like a bundle, plus the general-capability check
    job.py            options and the job's status (job.json)
    node.py           the `lora` graph node (a finished run reaches it by a fork: agent/runs.py run_lora)

Nothing heavy is imported here: torch, transformers and peft load inside the functions that train.
"""
