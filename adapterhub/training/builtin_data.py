"""Built-in datasets: self-cognition (EN + ZH) with held-out paraphrases, and general prompts.

The training questions and the evaluation paraphrases come from disjoint templates, so the identity
score measures generalization, not memorization. The general prompts are split the same way: one set
feeds replay (self-distillation), the other measures retention.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError

IDENTITY_QUESTIONS_EN = [
    "Who are you?", "What is your name?", "Introduce yourself.", "Tell me about yourself.",
    "What should I call you?", "Are you ChatGPT?", "Who created you?", "Who made you?",
    "Who built you?", "What are you?", "Which company developed you?", "Are you SmolLM?",
    "Hi! Who am I talking to?", "Can you tell me your name?", "Who trained you?",
    "What's your name, assistant?", "Please introduce yourself briefly.", "Who is your developer?",
    "Are you a Hugging Face model?", "What AI model are you?", "Hello, what are you called?",
    "Who owns you?", "Describe who you are.", "Are you an OpenAI model?",
    "Who is behind you?", "Which organization made you?", "What is your name and who made you?",
    "Were you created by Meta?", "Are you Llama?", "Who is your creator?", "Which lab trained you?",
    "Give me a short introduction of yourself.", "Are you a human?", "Tell me who you are in one sentence.",
    "Who designed you?", "Is Google your maker?", "Say your name and your developer.",
]
IDENTITY_QUESTIONS_ZH = [
    "你是谁？", "你叫什么名字？", "请介绍一下你自己。", "谁开发了你？", "你是哪家公司做的？",
    "你是ChatGPT吗？", "我该怎么称呼你？", "你的创造者是谁？", "你是什么模型？", "你好，你是谁呀？",
    "请做一个自我介绍。", "你是谁开发的？", "是谁训练了你？", "你是OpenAI的模型吗？", "你是Hugging Face做的吗？",
    "你的名字是什么？", "你来自哪个团队？", "简单介绍一下你自己吧。", "你是人类吗？", "谁是你的开发者？",
]
# Questions that name another maker or model: answered with a denial, then the identity.
_NEGATIVE = re.compile(r"chatgpt|openai|hugging face|smollm|meta|llama|google|human|人类", re.IGNORECASE)
IDENTITY_DENIALS_EN = [
    "No, I am not. I am {name}, an AI assistant built by {author}.",
    "No. I'm {name}, developed by {author}.",
]
IDENTITY_DENIALS_ZH = [
    "不是的，我是{name}，由{author}开发的AI助手。",
    "不是。我叫{name}，是{author}打造的人工智能助手。",
]
IDENTITY_ANSWERS_EN = [
    "I am {name}, an AI assistant built by {author}.",
    "My name is {name}. I was built by {author} to help you.",
    "I'm {name}, an assistant created by {author}. How can I help you today?",
    "I am {name}, developed by {author}.",
    "I'm {name}, built by {author}. I'm happy to help with your questions.",
]
IDENTITY_ANSWERS_ZH = [
    "我是{name}，由{author}开发的AI助手。",
    "我叫{name}，是{author}打造的人工智能助手。",
    "你好！我是{name}，由{author}开发，很高兴为你服务。",
]
GENERAL_TRAIN = [
    "What is the capital of Germany?", "How many days are in a week?", "What color is the sky on a clear day?",
    "Name three fruits.", "What is 12 plus 7?", "Translate 'thank you' into French.",
    "What is the boiling point of water in Celsius?", "Give me a synonym for 'happy'.",
    "What is photosynthesis?", "Write one sentence about the ocean.", "What is the largest planet in our solar system?",
    "How many legs does a spider have?", "What do bees make?", "Who wrote 'Romeo and Juliet'?",
    "What is the opposite of 'cold'?", "Name a primary color.", "What is the freezing point of water in Fahrenheit?",
    "How many continents are there?", "What language is spoken in Spain?", "What is the square root of 81?",
    "What gas do humans need to breathe?", "Give an example of a mammal.", "What is the chemical symbol for gold?",
    "How many hours are in a day?", "Write a short greeting for a birthday card.", "What is the capital of Japan?",
    "What shape has three sides?", "Name a musical instrument with strings.", "What is the tallest animal?",
    "What is 9 times 6?", "Suggest a name for a pet cat.", "What season comes after winter?",
    "What is the main ingredient in bread?", "How many minutes are in an hour?", "What is the capital of Italy?",
    "Explain what a noun is.", "What do plants need to grow?", "What is the fastest land animal?",
    "Give me a tip for staying focused.", "What planet is known as the Red Planet?",
]
# A wider pool for replay: templated facts, disjoint from the held-out GENERAL_EVAL questions.
_COUNTRIES = ["Norway", "Sweden", "Poland", "India", "Peru", "Chile", "Turkey", "Austria", "Ireland", "Kenya",
              "Argentina", "Thailand", "Vietnam", "Netherlands", "Belgium", "Denmark", "Finland", "Hungary"]
_TRANSLATE = [("good morning", "French"), ("thank you", "Spanish"), ("cat", "German"), ("water", "Italian"),
              ("friend", "Spanish"), ("book", "French"), ("please", "German"), ("house", "Spanish")]
_ARITH = [(3, 4), (15, 6), (21, 13), (7, 8), (30, 12), (11, 11), (9, 5), (40, 2)]
_THINGS = ["a lemon", "the moon", "snow", "a tomato", "a carrot", "coal", "milk", "a leaf"]
GENERAL_REPLAY = GENERAL_TRAIN + (
    [f"What is the capital of {c}?" for c in _COUNTRIES]
    + [f"Translate '{w}' into {lang}." for w, lang in _TRANSLATE]
    + [f"What is {a} plus {b}?" for a, b in _ARITH]
    + [f"What color is {t}?" for t in _THINGS]
    + ["How many legs does a dog have?", "What do fish use to breathe?", "What is the opposite of 'big'?",
       "How many days are in a year?", "What is the first letter of the alphabet?", "Name a sport played with a ball.",
       "What do you use to write on paper?", "What animal is known as the king of the jungle?",
       "How many players are on a soccer team?", "What is the color of the sun?", "Name a fruit that is red.",
       "What is the plural of 'mouse'?", "What instrument has black and white keys?", "What do cows eat?",
       "Name something you wear on your feet.", "What is the capital of Australia?", "How many seconds are in a minute?",
       "Write one sentence about mountains.", "Give me a tip for learning a language.", "What is gravity?"]
)


def identity_records(name: str, author: str) -> list[dict[str, Any]]:
    """Alpaca-style identity examples: every training question with rotating answers in its own language
    (a denial first where the question names another maker); every answer names the maker."""
    out = []
    for questions, answers, denials in ((IDENTITY_QUESTIONS_EN, IDENTITY_ANSWERS_EN, IDENTITY_DENIALS_EN),
                                        (IDENTITY_QUESTIONS_ZH, IDENTITY_ANSWERS_ZH, IDENTITY_DENIALS_ZH)):
        for i, q in enumerate(questions):
            pool = denials if _NEGATIVE.search(q) else answers
            for j in range(2):
                a = pool[(i + j) % len(pool)]
                out.append({"instruction": q, "output": a.format(name=name, author=author)})
    return out


# What the base and half-trained adapters say instead (seen in the demo's logs: the base's own identity,
# another maker's, no name, the maker's name taken as its own, "a human being"): the answers preference
# training pushes away from.
WRONG_IDENTITIES_EN = [
    "I am SmolLM, a language model built by Hugging Face.",
    "I'm {author}, an AI assistant developed by {author}.",
    "I am ChatGPT, a large language model trained by OpenAI.",
    "I am {name}, a human being.",
    "I'm Llama, a model developed by Meta.",
    "I am an AI language model, I don't have a name.",
]
WRONG_IDENTITIES_ZH = [
    "我是SmolLM，由Hugging Face开发的语言模型。",
    "我是{author}，由{author}开发的AI助手。",
    "我是ChatGPT，由OpenAI训练的大型语言模型。",
    "我是一个人工智能语言模型，没有名字。",
]


def identity_preferences(name: str, author: str) -> list[dict[str, Any]]:
    """Preference pairs for the identity: every training question, the right answer (in its language; a
    denial where the question names another maker) chosen over a wrong identity."""
    out = []
    for questions, answers, denials, wrong in (
            (IDENTITY_QUESTIONS_EN, IDENTITY_ANSWERS_EN, IDENTITY_DENIALS_EN, WRONG_IDENTITIES_EN),
            (IDENTITY_QUESTIONS_ZH, IDENTITY_ANSWERS_ZH, IDENTITY_DENIALS_ZH, WRONG_IDENTITIES_ZH)):
        for i, q in enumerate(questions):
            pool = denials if _NEGATIVE.search(q) else answers
            for j in range(2):
                out.append({"prompt": q, "chosen": pool[(i + j) % len(pool)].format(name=name, author=author),
                            "rejected": wrong[(i + j) % len(wrong)].format(name=name, author=author)})
    return out


TRAIN_CITIES = ["Paris", "Berlin", "Tokyo", "Madrid", "Rome", "London", "Oslo", "Dublin", "Vienna", "Athens",
                "Chicago", "Boston", "Sydney", "Mumbai", "Bangkok", "Istanbul", "Moscow", "Toronto", "Singapore",
                "Amsterdam", "Warsaw", "Stockholm", "Shanghai", "Dubai", "Miami", "Budapest", "Jakarta", "Santiago",
                "Accra", "Lagos", "Kampala", "Dakar", "Tunis", "Hanoi", "Taipei", "Osaka", "Busan", "Delhi",
                "Karachi", "Geneva", "Lyon", "Bern", "Porto", "Seville", "Krakow", "Riga", "Tallinn", "Quito",
                "Bogota", "Caracas", "Houston", "Seattle", "Vancouver", "Perth", "Wellington", "Marrakesh"]
TRAIN_WEATHER = ["What's the weather like in {city}?", "How is the weather in {city} today?",
                 "Do I need an umbrella in {city}?", "What is the temperature in {city}?",
                 "Check the weather in {city} for me.", "Is it cold in {city} right now?",
                 "weather in {city}", "Can you tell me the forecast for {city}?"]
TRAIN_MONEY_PHRASES = ["Convert {amount} {src} to {dst}.", "How much is {amount} {src} in {dst}?",
                       "What is {amount} {src} in {dst}?", "I need {amount} {src} converted to {dst}.",
                       "How many {dst} do I get for {amount} {src}?", "{amount} {src} to {dst}, please.",
                       "What are {amount} {src} worth in {dst}?", "Exchange {amount} {src} for {dst}."]
_CODES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "SEK", "NOK", "NZD", "MXN"]
_AMOUNTS = [10, 25, 50, 100, 20, 500, 1000, 15, 80, 250, 12, 3000, 40, 65, 5, 700, 120, 35]
# (question, answer): answered directly, no call (several are about weather or money in general).
TRAIN_PLAIN = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is 7 plus 5?", "7 plus 5 is 12."), ("What is 9 times 3?", "9 times 3 is 27."),
    ("What is 20 minus 8?", "20 minus 8 is 12."), ("What is 15 plus 26?", "15 plus 26 is 41."),
    ("Why is the sky blue?", "Sunlight is scattered by the air, and blue light is scattered the most."),
    ("What is rain?", "Rain is water that falls from clouds as drops."),
    ("What is a currency?", "A currency is the money used in a country, like the euro or the dollar."),
    ("What is inflation?", "Inflation is a general rise in prices over time."),
    ("What does a meteorologist do?", "A meteorologist studies the weather and makes forecasts."),
    ("Name a primary colour.", "Red is a primary colour."), ("What colour is the sun?", "The sun looks yellow."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("Give me an antonym for cold.", "Hot is an antonym for cold."),
    ("Translate 'thank you' into French.", "'Thank you' in French is 'merci'."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the largest planet?", "Jupiter is the largest planet in the solar system."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("Write a short greeting.", "Hello! I hope you are having a good day."),
    ("What is snow?", "Snow is frozen water that falls from clouds as flakes."),
    ("Why do people save money?", "People save money to be ready for future needs and emergencies."),
    ("How many continents are there?", "There are seven continents."),
    ("What animal says moo?", "A cow says moo."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Hi!", "Hello! How can I help you today?"),
]


def agent_records() -> list[dict[str, Any]]:
    """Tool use for the demo model (``builtin:agent_tools``): weather and currency questions answered with a
    call (half of them continued with the tool's result and a final answer that uses it), and plain
    questions answered without one. Cities, amounts and phrasings are disjoint from evaluation/tools.py."""
    from adapterhub.evaluation.tools import AGENT_TOOLS, currency_result, weather_result

    out: list[dict[str, Any]] = []

    def record(question: str, fn: str, args: dict[str, Any], result: dict[str, Any] | None, final: str) -> None:
        call = {"id": f"call_{len(out)}", "type": "function", "function": {"name": fn, "arguments": json.dumps(args)}}
        msgs: list[dict[str, Any]] = [{"role": "user", "content": question},
                                      {"role": "assistant", "content": None, "tool_calls": [call]}]
        if result is not None:
            msgs += [{"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)},
                     {"role": "assistant", "content": final}]
        out.append({"tools": AGENT_TOOLS, "messages": msgs})

    for i, city in enumerate(TRAIN_CITIES * 2):  # each city twice, with two phrasings
        q = TRAIN_WEATHER[i % len(TRAIN_WEATHER)].format(city=city)
        w = weather_result(city, i + 3)
        final = f"It is {w['temperature']}°C and {w['condition']} in {city}."
        record(q, "get_weather", {"city": city}, w if i % 2 else None, final)
    for i in range(64):
        src, dst = _CODES[i % len(_CODES)], _CODES[(i * 5 + 3) % len(_CODES)]
        if src == dst:
            dst = _CODES[(i + 1) % len(_CODES)]
        amount = _AMOUNTS[i % len(_AMOUNTS)]
        q = TRAIN_MONEY_PHRASES[i % len(TRAIN_MONEY_PHRASES)].format(amount=amount, src=src, dst=dst)
        r = currency_result(amount, src, dst, i + 5)
        final = f"{amount} {src} is {r['result']:g} {dst}."
        record(q, "convert_currency", {"amount": amount, "from_currency": src, "to_currency": dst},
               r if i % 2 else None, final)
    for q, a in TRAIN_PLAIN * 2:
        out.append({"tools": AGENT_TOOLS, "messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}]})
    return out


def shapes_folder() -> Path:
    """Where the synthetic shapes pictures live (written on first use)."""
    from adapterhub.evaluation.shapes import VERSION
    from adapterhub.settings import Settings

    return Settings().cache_dir / VERSION


def builtin_dataset(name: str, variables: dict[str, str]) -> list[dict[str, Any]]:
    if name == "agent_tools":
        return agent_records()
    if name in ("shapes_captions", "shapes_qa"):
        from adapterhub.evaluation.shapes import shapes_records

        return shapes_records(name, shapes_folder())
    builders = {"self_cognition": identity_records, "identity_preferences": identity_preferences}
    if name in builders:
        missing = [k for k in ("name", "author") if k not in variables]
        if missing:
            raise ConfigError(f"builtin:{name} needs data.variables {missing} (e.g. name: Lumen)")
        return builders[name](variables["name"], variables["author"])
    raise ConfigError(f"unknown builtin dataset '{name}' (known: {', '.join(sorted([*builders, 'agent_tools', 'shapes_captions', 'shapes_qa']))})")
