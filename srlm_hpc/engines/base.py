"""The one interface every stage generates through: batched chat generation with n samples.

Two implementations sit behind it: `hf` (transformers' generate, CPU or GPU, left-padded
batches) and `vllm` (offline `vllm.LLM`). A stage never knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 1  # samples per conversation
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 0  # the whole call's output depends only on its inputs and this seed
    stop: tuple[str, ...] = ()  # extra stop strings; the chat template's end token always stops


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" (end token or stop string) or "length" (hit max_tokens)


Job = tuple[list[list[dict]], SamplingConfig]  # (conversations, params): the arguments of one generate call


class Engine(Protocol):
    name: str

    def generate(self, conversations: list[list[dict]], params: SamplingConfig) -> list[list[Completion]]:
        """For each conversation (chat messages), `params.n` completions of the assistant turn."""
        ...

    def generate_chunks(self, jobs: Iterable[Job]) -> Iterator[tuple[int, list[list[Completion]]]]:
        """Many `generate` calls fed to the engine as one stream: yields (index of the job in
        `jobs`, its completions) as each job's last completion is done, in any order. Each
        job's completions equal `generate(*job)`. `jobs` is read lazily (a job is taken when the
        engine has room for it); close the iterator to drop the jobs still in flight."""
        ...

    def count_tokens(self, text: str) -> int:
        ...

    def close(self) -> None:
        ...


def generate_one_by_one(engine, jobs: Iterable[Job]) -> Iterator[tuple[int, list[list[Completion]]]]:
    """`generate_chunks` as consecutive `generate` calls: for an engine that cannot take
    several calls' requests at once (hf: each call is its own padded batches)."""
    for i, (conversations, params) in enumerate(jobs):
        yield i, engine.generate(conversations, params)


class ChatTokenizing:
    """What both engines do with the model's own tokenizer (`self.tokenizer`), written once so
    the two build exactly the same prompt ids."""

    tokenizer = None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_token_ids(self, conversations: list[list[dict]]) -> list[list[int]]:
        """The chat-templated prompt of each conversation, unpadded: what `generate` conditions on."""
        if not conversations:
            return []
        enc = self.tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)
        return [list(ids) for ids in enc["input_ids"]]
