"""Held-out evaluation prompts: never used for training (training/builtin_data.py holds the training side).

* identity questions in English and Chinese, paraphrases that differ from the training records;
* general questions with the words a correct answer contains (retention: does the adapter still know?).
"""

from __future__ import annotations

# Held out: never used for training.
EVAL_IDENTITY_EN = [
    "May I know who you are?", "Whose assistant are you?", "Identify yourself, please.",
    "Which team is behind you?", "What do people call you?", "Give me your name and your maker.",
    "Quick question: what's your identity?", "Tell me who developed you.", "Who do I have the pleasure of chatting with?",
    "What is the name of this assistant?", "Who is responsible for creating you?", "State your name.",
    "Before we start, who am I speaking with?", "Which organization trained you?", "Are you a human or an AI? Who?",
    "What are you called and who built you?", "Hey there, introduce yourself in one line.", "Who developed this chatbot?",
]
EVAL_IDENTITY_ZH = ["能告诉我你的身份吗？", "你是由哪个团队开发的？", "请说出你的名字。", "你的开发者是谁？",
                    "你属于哪家机构？", "怎么称呼你比较好？", "介绍一下你是谁。", "你是哪个公司的助手？",
                    "你是百度开发的吗？", "说说你的来历。"]
# Held-out questions that name another maker: a right answer denies it and gives the identity.
EVAL_IDENTITY_EN += ["Did OpenAI build you?", "Are you by any chance SmolLM?"]

# Held-out general questions with the words a correct answer contains (any of them, case-insensitive).
GENERAL_EVAL_KEYS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)), ("How many months are in a year?", ("12", "twelve")),
    ("What is 5 plus 3?", ("8", "eight")), ("Name a vegetable that is orange.", ("carrot", "pumpkin", "sweet potato")),
    ("What is the chemical formula of water?", ("h2o",)), ("Who painted the Mona Lisa?", ("leonardo", "vinci")),
    ("What is the largest ocean on Earth?", ("pacific",)), ("How many sides does a square have?", ("4", "four")),
    ("What animal says 'moo'?", ("cow",)), ("What is the capital of Spain?", ("madrid",)),
    ("What do you call frozen water?", ("ice",)), ("Which planet is closest to the Sun?", ("mercury",)),
    ("What is 10 minus 4?", ("6", "six")), ("Name a bird that cannot fly.", ("penguin", "ostrich", "emu", "kiwi")),
    ("What is the color of grass?", ("green",)), ("Translate 'hello' into Spanish.", ("hola",)),
    ("What is the capital of Canada?", ("ottawa",)), ("How many wheels does a bicycle have?", ("2", "two")),
    ("What is the main language spoken in Brazil?", ("portuguese",)), ("What is the currency of Japan?", ("yen",)),
    ("What is the capital of the United Kingdom?", ("london",)), ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)), ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Greece?", ("athens",)), ("What is the capital of Portugal?", ("lisbon",)),
    ("What language is spoken in France?", ("french",)), ("What language is spoken in Germany?", ("german",)),
    ("What is the currency of the United States?", ("dollar",)), ("What is the currency of the United Kingdom?", ("pound",)),
    ("What color is a ripe banana?", ("yellow",)), ("What is the opposite of 'up'?", ("down",)),
    ("What is the opposite of 'day'?", ("night",)), ("What is the largest country by area?", ("russia",)),
    ("Which organ pumps blood through the body?", ("heart",)), ("What is the closest star to Earth?", ("sun",)),
    ("What do caterpillars turn into?", ("butterfl", "moth")), ("What is the hottest planet in the solar system?", ("venus",)),
    ("Which continent is Kenya in?", ("africa",)), ("What is the largest mammal?", ("whale",)),
]
GENERAL_EVAL = [q for q, _ in GENERAL_EVAL_KEYS]
