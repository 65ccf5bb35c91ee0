"""The prompts the model sees: the paper's judge rubric and the self-instruct prompt.

The judge prompt is Fig. 2 of Yuan et al. (2024), with the original's curly quotes
and apostrophes. Every stage that judges (judge, eval, the EFT builder) renders it
through `judge_messages`, so the text lives in exactly one place.
"""

from __future__ import annotations

JUDGE_TEMPLATE = (
    "Review the user\u2019s question and the corresponding response using the additive 5-point\n"
    "scoring system described below. Points are accumulated based on the satisfaction of each\n"
    "criterion:\n"
    "- Add 1 point if the response is relevant and provides some information related to\n"
    "the user\u2019s inquiry, even if it is incomplete or contains some irrelevant content.\n"
    "- Add another point if the response addresses a substantial portion of the user\u2019s question,\n"
    "but does not completely resolve the query or provide a direct answer.\n"
    "- Award a third point if the response answers the basic elements of the user\u2019s question in a\n"
    "useful way, regardless of whether it seems to have been written by an AI Assistant or if it\n"
    "has elements typically found in blogs or search results.\n"
    "- Grant a fourth point if the response is clearly written from an AI Assistant\u2019s perspective,\n"
    "addressing the user\u2019s question directly and comprehensively, and is well-organized and\n"
    "helpful, even if there is slight room for improvement in clarity, conciseness or focus.\n"
    "- Bestow a fifth point for a response that is impeccably tailored to the user\u2019s question\n"
    "by an AI Assistant, without extraneous information, reflecting expert knowledge, and\n"
    "demonstrating a high-quality, engaging, and insightful answer.\n"
    "User: {instruction}\n"
    "<response>{response}</response>\n"
    "After examining the user\u2019s instruction and the response:\n"
    "- Briefly justify your total score, up to 100 words.\n"
    "- Conclude with the score using the format: \u201cScore: <total points>\u201d\n"
    "Remember to assess from the AI Assistant perspective, utilizing web search knowledge as\n"
    "necessary. To evaluate the response in alignment with this additive scoring model, we\u2019ll\n"
    "systematically attribute points based on the outlined criteria."
)


def judge_prompt(instruction: str, response: str) -> str:
    """The paper's judge prompt filled with one (instruction, response)."""
    # str.replace, not str.format: instructions and responses contain braces.
    return JUDGE_TEMPLATE.replace("{instruction}", instruction).replace("{response}", response)


def judge_messages(instruction: str, response: str) -> list[dict]:
    """The judge prompt as a one-turn chat, the form SFT teaches and every judge stage uses."""
    return [{"role": "user", "content": judge_prompt(instruction, response)}]


# Self-instruct (Wang et al. 2023) as the paper applies it: 8 demonstrations, each a
# task a person would ask a chatbot; the model continues the list with a new one. The
# paper prompted a fixed Llama 2-Chat 70B with few-shot text; with one chat model we
# phrase the same request as a chat turn (our choice; no config key switches it: the
# generator model itself is one, prompts.generator_model).
SELF_INSTRUCT_HEADER = (
    "Come up with a new task or question that a person would ask an AI assistant. "
    "Write only the task itself, with no answer, explanation or numbering. "
    "Here are some examples:\n"
)


def self_instruct_messages(demonstrations: list[str]) -> list[dict]:
    """Few-shot prompt asking for one new instruction after the demonstrations."""
    shots = "".join(f"<task>{d.strip()}</task>\n" for d in demonstrations)
    return [{"role": "user", "content": SELF_INSTRUCT_HEADER + shots + "Now write one new task."}]
