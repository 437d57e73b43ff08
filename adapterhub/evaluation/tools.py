"""Tool-use scores for an agent adapter, on held-out prompts (disjoint cities, amounts and phrasings from
the built-in ``agent_tools`` training data):

* tool_call — share of tool prompts answered with exactly one call of the right function whose
  arguments parse, validate against the function's schema and carry the right values (the city asked
  about; the amount and both currencies). A call of the right name with another city is a miss;
* no_call — share of plain questions (some about weather or money in general) answered without a call;
* tool_result — share of conversations where, given the call and the tool's result, the final answer
  states the result (the temperature, or the converted amount).
"""

from __future__ import annotations

import json
import re
from typing import Any

WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}}
CURRENCY_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert an amount of money from one currency to another.",
    "parameters": {"type": "object", "properties": {
        "amount": {"type": "number"},
        "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
        "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"}},
        "required": ["amount", "from_currency", "to_currency"], "additionalProperties": False}}}
AGENT_TOOLS = [WEATHER_TOOL, CURRENCY_TOOL]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in AGENT_TOOLS}

EVAL_CITIES = ["Lisbon", "Nairobi", "Seoul", "Montreal", "Prague", "Lima", "Helsinki", "Cairo", "Auckland",
               "Munich", "Havana", "Manila", "Zurich", "Denver", "Kyoto"]
EVAL_WEATHER = ["Could you look up the weather for {city}?", "Is it raining in {city} right now?",
                "Tell me the current temperature in {city}.", "{city} weather, please.",
                "I'm flying to {city} tonight. How's the weather there?"]
EVAL_MONEY = [(45, "USD", "JPY"), (1200, "EUR", "CHF"), (75, "GBP", "CAD"), (9, "AUD", "USD"), (310, "CNY", "EUR"),
              (60, "CHF", "GBP"), (2500, "JPY", "USD"), (18, "CAD", "EUR"), (99, "USD", "INR"), (400, "SEK", "NOK"),
              (33, "EUR", "USD"), (150, "INR", "GBP"), (7, "NZD", "AUD"), (880, "MXN", "USD"), (52, "USD", "CNY")]
EVAL_MONEY_PHRASES = ["Please convert {amount} {src} into {dst}.", "What do {amount} {src} come to in {dst}?",
                      "Change {amount} {src} to {dst} for me.", "{amount} {src} in {dst}?",
                      "If I have {amount} {src}, how much is that in {dst}?"]
EVAL_PLAIN = ["What is the capital of Portugal?", "What is 14 plus 9?", "Why do clouds form?",
              "Give me a synonym for happy.", "What is the capital of Kenya?", "How many days are in a week?",
              "What is a currency exchange rate?", "Name a fruit that is yellow.", "What is 6 times 7?",
              "What does a thermometer measure?", "Write one sentence about the sea.", "What colour is grass?",
              "What is the capital of Canada?", "Who wrote Romeo and Juliet?", "What is 100 minus 37?",
              "Why is winter colder than summer?", "What is the plural of mouse?", "How many legs does a spider have?",
              "What language is spoken in Brazil?", "What is money used for?"]


def tool_prompts() -> list[tuple[str, str, dict[str, Any]]]:
    """(question, function, expected arguments) for the held-out tool prompts."""
    out = []
    for i, city in enumerate(EVAL_CITIES):
        out.append((EVAL_WEATHER[i % len(EVAL_WEATHER)].format(city=city), "get_weather", {"city": city}))
    for i, (amount, src, dst) in enumerate(EVAL_MONEY):
        q = EVAL_MONEY_PHRASES[i % len(EVAL_MONEY_PHRASES)].format(amount=amount, src=src, dst=dst)
        out.append((q, "convert_currency", {"amount": amount, "from_currency": src, "to_currency": dst}))
    return out


def weather_result(city: str, i: int) -> dict[str, Any]:
    return {"city": city, "temperature": [21, 8, 15, 27, -3, 12, 30, 18][i % 8], "unit": "celsius",
            "condition": ["sunny", "cloudy", "rainy", "windy"][i % 4]}


def currency_result(amount: float, src: str, dst: str, i: int) -> dict[str, Any]:
    rate = [0.92, 1.08, 149.5, 0.79, 7.1, 1.36, 83.2, 0.65][i % 8]
    return {"amount": amount, "from": src, "to": dst, "result": round(amount * rate, 2)}


def call_problems(calls: list[tuple[str, str]], function: str, expected: dict[str, Any]) -> list[str]:
    """Why ``calls`` ((name, JSON arguments) parsed from an answer) is not the one right call."""
    import jsonschema

    if len(calls) != 1:
        return [f"{len(calls)} calls"]
    name, raw = calls[0]
    if name != function:
        return [f"called {name}"]
    try:
        args = json.loads(raw)
        jsonschema.validate(args, SCHEMAS[name])
    except (json.JSONDecodeError, jsonschema.ValidationError) as e:
        return [f"invalid arguments: {str(e).splitlines()[0]}"]
    problems = []
    for k, want in expected.items():
        got = args.get(k)
        same = (isinstance(got, (int, float)) and not isinstance(got, bool) and float(got) == float(want)
                if isinstance(want, (int, float)) else str(got).strip().lower() == str(want).lower())
        if not same:
            problems.append(f"{k}={got!r}, wanted {want!r}")
    return problems


def _followups() -> list[tuple[list[dict[str, Any]], str]]:
    """Conversations ending with a tool's result, and the value the final answer must state."""
    out = []
    for i, (q, fn, args) in enumerate(tool_prompts()[::3]):
        if fn == "get_weather":
            result = weather_result(args["city"], i)
            want = str(result["temperature"])
        else:
            result = currency_result(args["amount"], args["from_currency"], args["to_currency"], i)
            want = f"{result['result']:g}"
        call = {"id": f"call_{i}", "type": "function", "function": {"name": fn, "arguments": args}}
        out.append(([{"role": "user", "content": q}, {"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps(result)}], want))
    return out


def evaluate_tools(model: Any, tokenizer: Any, template: str | None, parser: str = "hermes",
                   max_new_tokens: int = 64) -> dict[str, Any]:
    """The three scores (see the module doc) with the misses, for a model with the adapter active."""
    from adapterhub.evaluation.generation import answer_conversations
    from adapterhub.tools import get_parser

    p = get_parser(parser)
    names = set(SCHEMAS)
    prompts = tool_prompts()
    convs = [[{"role": "user", "content": q}] for q, _, _ in prompts] + [[{"role": "user", "content": q}]
                                                                        for q in EVAL_PLAIN]
    follow = _followups()
    answers = answer_conversations(model, tokenizer, convs + [c for c, _ in follow], template=template,
                                   tools=AGENT_TOOLS, max_new_tokens=max_new_tokens, skip_special_tokens=True)
    tool_answers, plain_answers = answers[:len(prompts)], answers[len(prompts):len(convs)]
    final_answers = answers[len(convs):]
    return score_tools(p, names, prompts, tool_answers, plain_answers, follow, final_answers)


def score_tools(parser: Any, names: set[str], prompts: list[tuple[str, str, dict[str, Any]]], tool_answers: list[str],
                plain_answers: list[str], follow: list[tuple[list[dict[str, Any]], str]],
                final_answers: list[str]) -> dict[str, Any]:
    misses: dict[str, list[Any]] = {"tool_call": [], "no_call": [], "tool_result": []}
    right = 0
    for (q, fn, args), a in zip(prompts, tool_answers):
        _, calls = parser.parse(a, names)
        problems = call_problems([(c.name, c.arguments) for c in calls], fn, args)
        right += not problems
        if problems:
            misses["tool_call"].append((q, a, "; ".join(problems)))
    quiet = 0
    for q, a in zip(EVAL_PLAIN, plain_answers):
        _, calls = parser.parse(a, names)
        called = bool(calls) or parser.call_start(a) is not None
        quiet += not called
        if called:
            misses["no_call"].append((q, a))
    used = 0
    for (conv, want), a in zip(follow, final_answers):
        # the number itself, not a longer one containing it ("8" must not be found in "18" or "8.5")
        ok = re.search(rf"(?<![\d.]){re.escape(want)}(?![\d]|\.\d)", a) is not None and parser.call_start(a) is None
        used += ok
        if not ok:
            misses["tool_result"].append((conv[0]["content"], a, f"wanted {want}"))
    return {
        "tool_call": round(right / max(1, len(prompts)), 4), "tool_call_n": len(prompts),
        "no_call": round(quiet / max(1, len(EVAL_PLAIN)), 4), "no_call_n": len(EVAL_PLAIN),
        "tool_result": round(used / max(1, len(follow)), 4), "tool_result_n": len(follow),
        "misses": misses,
        "samples": {"tool_call": list(zip([q for q, _, _ in prompts], tool_answers))[:3],
                    "no_call": list(zip(EVAL_PLAIN, plain_answers))[:3]},
    }
