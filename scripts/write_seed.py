#!/usr/bin/env python
"""Write the shipped seed data: srlm_hpc/seed/ift.jsonl and srlm_hpc/seed/eft.jsonl.

The content below was written by hand for this project (it is not copied from the
Open Assistant dataset); it is rendered into the oasst1 *message* schema, one message
per line, so the same loader reads the shipped seed and a real oasst1 export.

- IFT: first-turn instruction trees. Each has an English prompter message and 1-3
  assistant replies ranked 0..n (rank 0 is the good one). A few extra trees exist only
  to exercise the loader's filters (another language, a deleted reply, a deleted root,
  an unranked reply, a second conversational turn).
- EFT: judge trees. The prompter message is `srlm_hpc.templates.judge_prompt(instruction,
  response)`; the single assistant reply (rank 0) is a short justification that walks
  through the additive rubric and ends with a line `Score: N`.

All ids are uuid5 of a fixed namespace and a name derived from the text, and all dates
and metadata are derived from hashes of those names, so a rerun is byte-identical.

Usage:
    python scripts/write_seed.py           # (re)write the two files and print counts
    python scripts/write_seed.py --check   # exit 1 unless the shipped files match
    python scripts/write_seed.py --out DIR # write (or --check) DIR/ift.jsonl, DIR/eft.jsonl instead
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srlm_hpc.templates import judge_prompt  # noqa: E402  (the rubric lives there only)

SEED_DIR = REPO / "srlm_hpc" / "seed"
NAMESPACE = uuid.UUID("5e1f2a0c-7d3b-4c8e-9a61-0b2d4f6e8a10")  # fixed: ids must never change

# ---------------------------------------------------------------------------------------
# IFT: (prompt, [rank-0 reply, rank-1 reply, ...]); rank 0 is the reply to imitate.
# ---------------------------------------------------------------------------------------

IFT_TREES: list[dict] = [
    {
        "prompt": "How do I make pour-over coffee at home?",
        "replies": [
            "You need a dripper, a paper filter, freshly ground coffee and water just off the boil "
            "(about 93-96 °C).\n\n"
            "1. Rinse the filter with hot water and discard the water; this removes the papery taste "
            "and warms the dripper.\n"
            "2. Use about 15 g of medium-fine coffee for 250 g of water (a 1:16 ratio).\n"
            "3. Pour roughly 40 g of water to wet the grounds and wait 30-45 seconds while they bloom.\n"
            "4. Pour the rest slowly in circles, keeping the level steady, so it finishes dripping in "
            "about 3 minutes.\n\n"
            "If it tastes bitter, grind coarser; if it tastes sour or weak, grind finer.",
            "Put coffee in a filter and pour hot water over it. Wait until it drips through and then "
            "drink it. You can add milk or sugar if you like.",
            "Pour-over coffee is a popular method that many coffee lovers enjoy. It was invented in "
            "Germany by Melitta Bentz in 1908. There are many drippers available, such as the V60 and "
            "the Chemex.",
        ],
    },
    {
        "prompt": "Can you explain photosynthesis in simple terms?",
        "replies": [
            "Photosynthesis is how plants make their own food using sunlight.\n\n"
            "Inside leaves are tiny structures called chloroplasts, which contain a green pigment, "
            "chlorophyll. Chlorophyll absorbs light energy. The plant uses that energy to combine carbon "
            "dioxide, taken in from the air through small pores in the leaves, with water drawn up from "
            "the roots. The result is glucose, a sugar the plant uses for energy and to build its "
            "tissues, and oxygen, which is released into the air.\n\n"
            "In short: carbon dioxide + water + light → glucose + oxygen. This process is also the "
            "source of almost all the oxygen we breathe.",
            "Photosynthesis is when plants breathe in oxygen and breathe out carbon dioxide using the sun.",
        ],
    },
    {
        "prompt": "Write a haiku about autumn rain.",
        "replies": [
            "Cold rain on the roof—\nmaple leaves let go at once,\nthe gutter runs red.",
            "Autumn rain is falling down\nThe leaves are orange and brown\nI stay inside my town",
        ],
    },
    {
        "prompt": "How do I reverse a string in Python?",
        "replies": [
            "The simplest way is slicing with a step of -1:\n\n"
            "```python\n"
            "text = \"hello\"\n"
            "reversed_text = text[::-1]\n"
            "print(reversed_text)  # olleh\n"
            "```\n\n"
            "`[::-1]` walks the string from the end to the start. Strings are immutable, so this returns "
            "a new string and leaves `text` unchanged.\n\n"
            "An alternative that reads more explicitly is `''.join(reversed(text))`: `reversed()` gives "
            "the characters backwards and `join` glues them together. Both work for any string, "
            "including an empty one.",
            "Use a for loop: go over the string and add each character to the front of a new string. "
            "This is slower, but it works.",
            "You can call text.reverse() to reverse the string.",
        ],
    },
    {
        "prompt": "What is the derivative of x^2 sin(x)?",
        "replies": [
            "Use the product rule, (uv)' = u'v + uv', with u = x² and v = sin(x):\n\n"
            "- u' = 2x\n"
            "- v' = cos(x)\n\n"
            "So\n\n"
            "d/dx [x² sin(x)] = 2x sin(x) + x² cos(x).\n\n"
            "You can also factor out x and write it as x(2 sin(x) + x cos(x)).",
            "The derivative is 2x cos(x).",
        ],
    },
    {
        "prompt": "Why is the sky blue?",
        "replies": [
            "Sunlight contains all colours. As it passes through the atmosphere, it hits nitrogen and "
            "oxygen molecules that are much smaller than the wavelength of light. These molecules "
            "scatter light in all directions, and this Rayleigh scattering is much stronger for short "
            "wavelengths: it goes roughly as 1/wavelength⁴, so blue light is scattered several times "
            "more than red. Wherever you look in the sky, you see this scattered blue light.\n\n"
            "Violet is scattered even more, but the sun emits less of it and our eyes are less "
            "sensitive to it, so the sky looks blue. At sunset, light crosses much more air, most of "
            "the blue is scattered away, and reds and oranges remain.",
            "Because of the way sunlight scatters in the air.",
            "The sky is blue because it reflects the colour of the ocean.",
        ],
    },
    {
        "prompt": "What were the main reasons the Western Roman Empire fell?",
        "replies": [
            "Historians usually point to several causes acting together rather than a single one:\n\n"
            "- **Political instability**: in the 3rd to 5th centuries emperors were often overthrown, "
            "and civil wars drained resources.\n"
            "- **Economic strain**: heavy taxation, a debased currency and the cost of defending long "
            "frontiers.\n"
            "- **Military pressure**: migrations and invasions by Goths, Vandals, Huns and others; Rome "
            "relied more and more on Germanic troops whose loyalty was uncertain.\n"
            "- **Division of the empire**: after 395 the richer, easier-to-defend East survived while "
            "the West weakened.\n\n"
            "The conventional end date is 476, when Odoacer deposed the last western emperor, Romulus "
            "Augustulus. The Eastern Empire lasted until 1453.",
            "Rome fell because of lead poisoning from the water pipes and because the emperors were bad.",
        ],
    },
    {
        "prompt": "Do you have any tips for a job interview?",
        "replies": [
            "Here are the things that make the most difference:\n\n"
            "1. **Research the company**: know what it does, its recent news, and why you want this "
            "role in particular.\n"
            "2. **Prepare stories**: pick 4-5 examples from your experience (a success, a conflict, a "
            "mistake you learned from) and practise telling them: the situation, what you did, and "
            "the result.\n"
            "3. **Match the job description**: have a concrete example ready for each key requirement.\n"
            "4. **Ask good questions**, such as what success looks like in the first six months.\n"
            "5. **Logistics**: test your video setup or plan your route, and be ready 10 minutes early.\n\n"
            "Afterwards, send a short thank-you note that mentions something specific from the "
            "conversation.",
            "Just be yourself and be confident. Dress nicely.",
            "Job interviews can be stressful. Many people get nervous before interviews. It is normal "
            "to feel nervous.",
        ],
    },
    {
        "prompt": "How long should I boil an egg for a soft or a hard yolk?",
        "replies": [
            "Timings for a large egg taken straight from the fridge and lowered into water that is "
            "already boiling:\n\n"
            "- **6 minutes**: set white, runny yolk (soft-boiled, good for dipping toast).\n"
            "- **8 minutes**: jammy, just-set yolk.\n"
            "- **10-11 minutes**: hard-boiled, firm but not chalky.\n\n"
            "Lower the eggs gently with a spoon so they don't crack, and keep the water at a gentle "
            "boil. When the time is up, move them straight into cold or iced water for a couple of "
            "minutes; this stops the cooking and makes them easier to peel. Add about a minute for "
            "extra-large eggs and take off a minute for medium ones.",
            "Boil it for about 20 minutes to be safe.",
        ],
    },
    {
        "prompt": "I have two days in Kyoto. What should I see?",
        "replies": [
            "Two days is enough for the highlights if you group sights by area.\n\n"
            "**Day 1, east Kyoto**: start early at Fushimi Inari, before the crowds, and walk up "
            "through the torii gates. Then head to Kiyomizu-dera and stroll down the old streets of "
            "Sannenzaka and Ninenzaka to Yasaka Shrine. Spend the evening in Gion.\n\n"
            "**Day 2, west and north**: go to Arashiyama in the morning for the bamboo grove, "
            "Tenryu-ji and the river. In the afternoon visit Kinkaku-ji, the Golden Pavilion, and, if "
            "time allows, the rock garden at nearby Ryoan-ji.\n\n"
            "Get an ICOCA card for buses and trains, and expect the buses to be crowded.",
            "Kyoto has many temples. You should visit some temples and also try the food. Tokyo is "
            "also nice.",
        ],
    },
    {
        "prompt": "What's the difference between a list and a tuple in Python?",
        "replies": [
            "The main difference is mutability:\n\n"
            "- A **list** (`[1, 2, 3]`) is mutable: you can append, remove or change items after "
            "creating it.\n"
            "- A **tuple** (`(1, 2, 3)`) is immutable: once created, its contents can't change.\n\n"
            "Consequences:\n\n"
            "- Tuples can be dictionary keys or set members (if their items are hashable); lists can't.\n"
            "- Tuples signal a fixed structure, such as a coordinate `(x, y)`, while lists suit "
            "collections that grow or shrink.\n"
            "- Tuples are slightly smaller in memory and faster to create.\n\n"
            "Rule of thumb: a list for a sequence of similar things you will modify, a tuple for a "
            "fixed group of values.",
            "Lists use square brackets and tuples use round brackets.",
            "There is no real difference, they are both sequences.",
        ],
        # A second conversational turn: the loader keeps only the first turn.
        "followup": (
            "Can I convert one into the other?",
            "Yes: `tuple(my_list)` makes a tuple from a list, and `list(my_tuple)` makes a list from a "
            "tuple. Both create a new object and leave the original unchanged.",
        ),
    },
    {
        "prompt": "How does compound interest work? Can you show an example?",
        "replies": [
            "With compound interest you earn interest not only on your original deposit but also on "
            "the interest already added. Each period, interest is calculated on the new, larger "
            "balance.\n\n"
            "The formula is A = P(1 + r)^n, where P is the starting amount, r the interest rate per "
            "period and n the number of periods.\n\n"
            "Example: you deposit $1,000 at 5% a year.\n"
            "- After year 1: 1,000 × 1.05 = $1,050\n"
            "- After year 2: 1,050 × 1.05 = $1,102.50\n"
            "- After 10 years: 1,000 × 1.05^10 ≈ $1,628.89\n\n"
            "With simple interest you would have $1,500 after 10 years. The gap widens over time, "
            "which is why starting to save early matters so much.",
            "Compound interest means the bank pays you interest. For example, 5% of 1000 is 50, so "
            "after 10 years you have 1500.",
        ],
    },
    {
        "prompt": "Write a polite email declining a meeting invitation.",
        "replies": [
            "Subject: Re: Project sync on Thursday\n\n"
            "Hi Maria,\n\n"
            "Thank you for the invitation to Thursday's project sync. Unfortunately I won't be able "
            "to attend, as I have a prior commitment at that time.\n\n"
            "I don't want to hold things up, so please go ahead without me. If it helps, I can send "
            "my update on the timeline beforehand, or we could find 15 minutes later in the week to "
            "catch up.\n\n"
            "Thanks for understanding, and sorry for any inconvenience.\n\n"
            "Best regards,\n"
            "Daniel",
            "Hi, I can't come to the meeting. Bye.",
        ],
    },
    {
        "prompt": "How do vaccines work?",
        "replies": [
            "Vaccines train your immune system to recognise a germ without you having to get sick "
            "first.\n\n"
            "A vaccine contains a harmless piece or version of a pathogen: an inactivated or weakened "
            "virus, a protein from its surface, or instructions (such as mRNA) that let your cells "
            "make that protein briefly. Your immune system treats it as foreign: B cells make "
            "antibodies that bind to it, and T cells learn to recognise it.\n\n"
            "Some of these cells become long-lived memory cells. If you later meet the real pathogen, "
            "they recognise it and mount a fast, strong response, often clearing the infection before "
            "it causes serious illness. Some vaccines need boosters because this memory fades over time.",
            "Vaccines put a small amount of the disease in you, so you get a little sick and then you "
            "are immune forever.",
        ],
    },
    {
        "prompt": "Can you explain recursion to a beginner?",
        "replies": [
            "Recursion is when a function solves a problem by calling itself on a smaller version of "
            "the same problem. Every recursive function needs two parts:\n\n"
            "1. A **base case**: a version so small you can answer it directly. It stops the recursion.\n"
            "2. A **recursive case**: make the problem smaller and call the function on it.\n\n"
            "Example, the factorial n! = n × (n-1) × ... × 1:\n\n"
            "```python\n"
            "def factorial(n):\n"
            "    if n <= 1:                   # base case\n"
            "        return 1\n"
            "    return n * factorial(n - 1)  # recursive case\n"
            "```\n\n"
            "`factorial(3)` calls `factorial(2)`, which calls `factorial(1)`, which returns 1; the "
            "results then multiply back up: 2 × 1 = 2, then 3 × 2 = 6. Without a base case, the "
            "function would call itself forever.",
            "Recursion is a function that calls itself.",
        ],
    },
    {
        "prompt": "What is the Pythagorean theorem?",
        "replies": [
            "The Pythagorean theorem says that in a right-angled triangle, the square of the "
            "hypotenuse (the side opposite the right angle) equals the sum of the squares of the "
            "other two sides:\n\n"
            "a² + b² = c²\n\n"
            "where c is the hypotenuse.\n\n"
            "Example: if the two shorter sides are 3 and 4, then c² = 9 + 16 = 25, so c = 5.\n\n"
            "It is used to find distances, for example the straight-line distance between two points "
            "on a grid. It only holds for right-angled triangles; for others you need the law of "
            "cosines.",
            "a + b = c for every triangle.",
        ],
    },
    {
        "prompt": "How do I get rid of fruit flies in my kitchen?",
        "replies": [
            "Fruit flies breed in fermenting food, so remove the source first and then trap the adults.\n\n"
            "1. **Find the source**: overripe fruit, onions or potatoes, the bin, recycling (rinse "
            "bottles and cans) and the sink drain.\n"
            "2. **Clean**: empty the bin, wipe surfaces and pour boiling water down the drain.\n"
            "3. **Trap**: put a little apple cider vinegar in a jar with a drop of dish soap. The soap "
            "breaks the surface tension, so flies that land sink. Covering the jar with cling film "
            "poked with a few small holes works even better.\n"
            "4. **Prevent**: keep fruit in the fridge for a week or two.\n\n"
            "Each female lays hundreds of eggs, so keep the traps out for about two weeks to catch "
            "the next generation.",
            "Spray insecticide everywhere in the kitchen.",
            "Fruit flies are small insects that like fruit.",
        ],
    },
    {
        "prompt": "Can you suggest some names for a small neighbourhood bakery?",
        "replies": [
            "Here are a few in different styles:\n\n"
            "**Warm and homely**: The Daily Crumb, Hearth & Honey, Corner Loaf\n"
            "**Playful**: Knead to Know, Rise & Shine, Bread Winners\n"
            "**Simple and elegant**: Flour House, Golden Crust, Salt & Rye\n\n"
            "Before deciding, check that no bakery nearby already uses the name, that a matching web "
            "domain and social media handle are free, and say it out loud: a good name is easy to "
            "spell after hearing it once. If you tell me your specialities or the character of the "
            "neighbourhood, I can tailor the list.",
            "Bakery 1, Best Bakery, Bread Shop.",
        ],
    },
    {
        "prompt": "How can I improve my sleep?",
        "replies": [
            "A few habits make the biggest difference for most people:\n\n"
            "- **Keep a consistent schedule**: go to bed and get up at the same time every day, "
            "weekends included.\n"
            "- **Get morning light**: 10-20 minutes outdoors soon after waking helps set your body clock.\n"
            "- **No caffeine after early afternoon**; its effects last six hours or more.\n"
            "- **Limit alcohol**: it makes you drowsy but fragments sleep later in the night.\n"
            "- **Keep the bedroom dark, quiet and cool** (around 18 °C).\n"
            "- **Wind down**: dim the lights and put screens away 30-60 minutes before bed.\n"
            "- If you can't sleep after about 20 minutes, get up and do something calm until you feel "
            "sleepy.\n\n"
            "If you snore loudly, wake up gasping, or feel tired despite enough sleep, see a doctor.",
            "Take sleeping pills every night, they work well.",
        ],
    },
    {
        "prompt": "What is the capital of Australia?",
        "replies": [
            "The capital of Australia is Canberra. Many people guess Sydney or Melbourne, the two "
            "largest cities; in fact Canberra was chosen as a compromise between them and built as a "
            "planned capital, and Parliament first met there in 1927.",
            "Sydney.",
        ],
    },
    {
        "prompt": "In SQL, how do I count the number of rows for each category?",
        "replies": [
            "Use `GROUP BY` with `COUNT(*)`:\n\n"
            "```sql\n"
            "SELECT category, COUNT(*) AS n\n"
            "FROM products\n"
            "GROUP BY category\n"
            "ORDER BY n DESC;\n"
            "```\n\n"
            "This returns one row per distinct `category` with the number of rows in it, largest "
            "first.\n\n"
            "- `COUNT(*)` counts all rows, while `COUNT(column)` skips rows where that column is NULL.\n"
            "- To keep only some groups, filter after grouping with `HAVING`, e.g. "
            "`HAVING COUNT(*) > 10`. Use `WHERE` to filter rows before they are grouped.",
            "SELECT COUNT(category) FROM products;",
        ],
    },
    {
        "prompt": "Who was Ada Lovelace?",
        "replies": [
            "Ada Lovelace (1815-1852) was an English mathematician, often described as the first "
            "computer programmer. She was the daughter of the poet Lord Byron.\n\n"
            "She worked with Charles Babbage on his Analytical Engine, a mechanical general-purpose "
            "computer that was never completed. In 1843 she translated an article about the engine "
            "by the Italian engineer Luigi Menabrea and added long notes of her own. Note G contains "
            "an algorithm for computing Bernoulli numbers on the machine, regarded as the first "
            "published computer program.\n\n"
            "She also saw further than Babbage: she suggested such machines could work with symbols "
            "other than numbers, such as music. The programming language Ada is named after her.",
            "Ada Lovelace invented the first computer in the 1900s.",
        ],
    },
    {
        "prompt": "Why does water boil at a lower temperature on a mountain?",
        "replies": [
            "Water boils when its vapour pressure equals the pressure of the air above it. At sea "
            "level the air pressure is about 101 kPa, and water reaches that vapour pressure at "
            "100 °C.\n\n"
            "Higher up there is less air above you, so the pressure is lower, and water reaches it "
            "at a lower temperature: roughly 1 °C less for every 300 m of altitude. At 3,000 m water "
            "boils at around 90 °C, and on the summit of Everest at about 70 °C.\n\n"
            "That's why food takes longer to cook at altitude: the boiling water is simply cooler. "
            "Pressure cookers fix this by raising the pressure, and with it the boiling point.",
            "Because it is colder on mountains, so the water gets hot faster.",
        ],
    },
    {
        "prompt": "How many miles is 5 km?",
        "replies": [
            "5 km is about 3.11 miles.\n\n"
            "One kilometre is 0.621371 miles, so 5 × 0.621371 ≈ 3.107 miles. That's why a 5K race "
            "is usually described as a 3.1-mile run. For a quick mental estimate, multiply "
            "kilometres by 0.6: 5 km ≈ 3 miles.",
        ],
    },
    {
        "prompt": "How do I make a simple tomato sauce for pasta?",
        "replies": [
            "This basic sauce takes about 25 minutes and serves four.\n\n"
            "Ingredients: 2 tbsp olive oil, 2 garlic cloves (sliced), a 400 g can of tomatoes, salt, "
            "a pinch of sugar if the tomatoes are sharp, and fresh basil.\n\n"
            "1. Warm the oil over medium-low heat and cook the garlic for about a minute, until "
            "fragrant but not brown.\n"
            "2. Add the tomatoes, crushing whole ones with a spoon, and a good pinch of salt.\n"
            "3. Simmer uncovered for 15-20 minutes, stirring now and then, until it thickens.\n"
            "4. Taste, adjust the salt, and stir in torn basil at the end.\n\n"
            "Toss it with the drained pasta and a splash of the pasta water so it coats evenly.",
            "Mix ketchup with water and heat it up.",
        ],
    },
    {
        "prompt": "What's a good workout routine for a complete beginner?",
        "replies": [
            "A simple full-body routine three times a week (say Monday, Wednesday and Friday) is a "
            "great start:\n\n"
            "1. Squats (bodyweight): 3 sets of 10\n"
            "2. Push-ups (on your knees or against a bench if needed): 3 sets of 8-10\n"
            "3. Dumbbell or backpack rows: 3 sets of 10 per arm\n"
            "4. Glute bridges: 3 sets of 12\n"
            "5. Plank: 3 holds of 20-30 seconds\n\n"
            "Rest about a minute between sets. On two other days, walk briskly or cycle for 20-30 "
            "minutes.\n\n"
            "Focus on good form first, then make it harder slowly, adding reps or a little weight "
            "each week. Some muscle soreness is normal at first; sharp pain isn't. If you have a "
            "health condition, check with a doctor first.",
            "Run 10 km every day and lift the heaviest weights you can.",
        ],
    },
    {
        "prompt": "What is an API?",
        "replies": [
            "An API (application programming interface) is a defined way for one piece of software "
            "to talk to another. It specifies what requests you can make, what data to send and what "
            "you'll get back, without you needing to know how the other system works inside.\n\n"
            "A restaurant analogy: you don't go into the kitchen; you order from a menu (the API) "
            "through a waiter, and the kitchen (the other system) sends back your dish.\n\n"
            "For example, a weather app doesn't measure the weather itself: it sends a request such "
            "as `GET /forecast?city=Paris` to a weather service's web API and receives the forecast "
            "as data, usually JSON, which it then displays.",
            "API stands for Advanced Programming Internet.",
        ],
    },
    {
        "prompt": "How can I pack only a carry-on for a week-long trip?",
        "replies": [
            "It's very doable if you plan outfits that mix and match.\n\n"
            "- **Pick a colour scheme** so every top goes with every bottom: 4-5 tops, 2 bottoms and "
            "one layer such as a sweater or light jacket.\n"
            "- **Wear your bulkiest items** (shoes, jacket) on travel day.\n"
            "- **Limit shoes to two pairs**, including the pair you're wearing.\n"
            "- **Roll clothes or use packing cubes** to compress them.\n"
            "- **Plan to wash once**: a little travel detergent lets you rinse items in the sink "
            "mid-week.\n"
            "- **Travel-size toiletries**: liquids usually must be in containers of 100 ml or less in "
            "a clear bag.\n\n"
            "Check your airline's size and weight limits before you go; budget airlines are often strict.",
            "Just bring fewer clothes.",
        ],
    },
    {
        "prompt": "Can you summarize the plot of Romeo and Juliet?",
        "replies": [
            "In Verona, two families, the Montagues and the Capulets, are locked in a feud. Romeo, a "
            "Montague, sneaks into a Capulet party and falls in love with Juliet, a Capulet. They "
            "marry in secret with the help of Friar Laurence.\n\n"
            "Soon after, Juliet's cousin Tybalt kills Romeo's friend Mercutio, and Romeo kills Tybalt "
            "in revenge and is banished. Juliet's parents, unaware she is married, arrange for her to "
            "marry Paris. The Friar gives her a potion to fake her death and plans to tell Romeo, but "
            "the message never reaches him.\n\n"
            "Believing Juliet dead, Romeo poisons himself at her tomb. Juliet wakes, finds him dead "
            "and stabs herself. Their deaths finally reconcile the two families.",
            "Romeo and Juliet is a comedy by Shakespeare in which two lovers get married and live "
            "happily ever after.",
        ],
    },
    {
        "prompt": "Write a limerick about a lazy cat.",
        "replies": [
            "A lazy old tabby named Lou\n"
            "Found nothing he wanted to do.\n"
            "He would stretch, yawn and blink,\n"
            "Then curl up by the sink,\n"
            "And sleep the whole afternoon through.",
            "The cat is lazy. It sleeps all day. It likes to eat fish. The end.",
        ],
    },
    {
        "prompt": "How do I undo my last Git commit?",
        "replies": [
            "It depends on whether you've pushed it and whether you want to keep the changes.\n\n"
            "- **Keep the changes, undo the commit** (not pushed yet): `git reset --soft HEAD~1`. "
            "The changes stay staged, so you can fix them and commit again.\n"
            "- **Throw away the commit and its changes** (not pushed): `git reset --hard HEAD~1`. "
            "Careful: uncommitted work is lost too.\n"
            "- **Already pushed to a shared branch**: `git revert HEAD`. This adds a new commit that "
            "undoes the last one, without rewriting history that others may have pulled.\n\n"
            "If you only want to change the message or add a forgotten file, use "
            "`git commit --amend` instead.",
            "Use git reset.",
            "Delete the .git folder and start again.",
        ],
    },
    {
        "prompt": "Why do leaves change colour in the autumn?",
        "replies": [
            "Leaves are green in summer because they are full of chlorophyll, the pigment used for "
            "photosynthesis, which is constantly broken down and replaced.\n\n"
            "In autumn, as days shorten and temperatures drop, deciduous trees stop making new "
            "chlorophyll and pull nutrients back into their branches before dropping the leaves. As "
            "the green fades, yellow and orange pigments called carotenoids, which were there all "
            "along, become visible. Some trees, such as maples, also make red and purple pigments, "
            "anthocyanins, from sugars trapped in the leaf. Sunny days and cool nights boost them, "
            "which is why some autumns are more vivid than others.",
            "Because the cold weather paints them.",
        ],
    },
    {
        "prompt": "How do I calculate the area of a circle?",
        "replies": [
            "Use A = πr², where r is the radius (the distance from the centre to the edge) and "
            "π ≈ 3.14159.\n\n"
            "Example: a circle with a radius of 4 cm has an area of π × 4² = 16π ≈ 50.27 cm².\n\n"
            "If you know the diameter d instead, halve it first: r = d/2, so A = πd²/4. The answer is "
            "always in square units (cm², m² and so on).",
            "Area = 2πr.",
        ],
    },
    {
        "prompt": "What is inflation?",
        "replies": [
            "Inflation is the general rise in prices across an economy over time, so each unit of "
            "money buys less than before. With 3% inflation, a basket of goods that costs $100 today "
            "costs about $103 a year later.\n\n"
            "It is usually measured with a consumer price index, which tracks the price of a typical "
            "basket of goods and services.\n\n"
            "Common causes are demand growing faster than the economy can produce, rising costs such "
            "as energy or wages, and rapid growth in the money supply. Central banks typically aim "
            "for low, stable inflation of around 2%, and raise interest rates to cool it when it runs "
            "too high.",
            "Inflation is when prices go down.",
        ],
    },
    {
        "prompt": "What's the best way to start learning a new language?",
        "replies": [
            "Combine a little structure with a lot of exposure, every day:\n\n"
            "1. **Learn the most common words first**: about 1,000 words cover a large share of "
            "everyday speech. A spaced-repetition app such as Anki helps them stick.\n"
            "2. **Follow one beginner course** (an app, a textbook or a class) for grammar, rather "
            "than jumping between many.\n"
            "3. **Listen daily**: podcasts for learners, then shows with subtitles in the language.\n"
            "4. **Speak early**: a tutor or exchange partner, even 30 minutes a week, beats months of "
            "silent study.\n"
            "5. **Be consistent**: 20-30 minutes a day beats three hours once a week.\n\n"
            "Expect to feel awkward at first; making mistakes out loud is part of the process.",
            "Buy a dictionary and memorize it from A to Z.",
        ],
    },
    {
        "prompt": "What's the difference between weather and climate?",
        "replies": [
            "Weather is the state of the atmosphere at a particular place and time: today's "
            "temperature, rain, wind and cloud. It changes from hour to hour and day to day.\n\n"
            "Climate is the long-term pattern of weather in a region, usually averaged over 30 years "
            "or more: for example, that a city has hot, dry summers and mild, wet winters.\n\n"
            "A common way to put it: climate is what you expect, weather is what you get. One cold "
            "week doesn't disprove a warming climate, just as one hot day doesn't prove it; climate "
            "is about trends across decades.",
            "They are the same thing.",
        ],
    },
    {
        "prompt": "How do I find all files larger than 100 MB on Linux?",
        "replies": [
            "Use `find` with the `-size` option:\n\n"
            "```bash\n"
            "find / -type f -size +100M 2>/dev/null\n"
            "```\n\n"
            "- `/` is where to start; use `.` or `~` to search only the current or home directory.\n"
            "- `-type f` keeps regular files only.\n"
            "- `-size +100M` means larger than 100 MiB.\n"
            "- `2>/dev/null` hides the 'Permission denied' errors.\n\n"
            "To see their sizes, largest first:\n\n"
            "```bash\n"
            "find ~ -type f -size +100M -exec du -h {} + | sort -rh\n"
            "```",
            "Use ls -l and look at the sizes.",
        ],
    },
    {
        "prompt": "Why was the printing press so important?",
        "replies": [
            "Johannes Gutenberg's movable-type printing press, developed around 1440-1450 in Mainz, "
            "transformed how information spread.\n\n"
            "- **Cost and speed**: books no longer had to be copied by hand, so they became far "
            "cheaper and more plentiful.\n"
            "- **Literacy**: cheaper books encouraged more people to learn to read.\n"
            "- **Religion**: the Reformation spread quickly because Luther's writings could be "
            "printed in large numbers.\n"
            "- **Science**: scholars could share identical, accurate copies of findings, tables and "
            "diagrams, which helped the Scientific Revolution.\n"
            "- **Standardisation**: printing helped fix spelling and grammar in national languages.\n\n"
            "In short, it made knowledge reproducible and widely shared.",
            "The printing press was invented by Benjamin Franklin.",
        ],
    },
    {
        "prompt": "How do I keep a basil plant alive indoors?",
        "replies": [
            "Basil needs lots of light, warmth and steady moisture.\n\n"
            "- **Light**: put it in your sunniest window; it wants six or more hours of sun. In "
            "winter, a small grow light helps.\n"
            "- **Water**: keep the soil moist but not soggy. Water when the top centimetre feels dry, "
            "and use a pot with drainage holes.\n"
            "- **Warmth**: keep it above about 15 °C and away from cold drafts.\n"
            "- **Pinch it**: harvest from the top, cutting just above a pair of leaves, which makes it "
            "bushier. Remove flower buds as they appear, or it will stop producing leaves.\n\n"
            "Supermarket pots are often several plants crammed together; splitting them into a few "
            "pots helps them last much longer.",
            "Water it a lot every day and keep it in a dark cupboard.",
        ],
    },
    {
        "prompt": "Can you give me some tips for public speaking?",
        "replies": [
            "Some practical tips:\n\n"
            "1. **Know your main message**: be able to state it in one sentence, and build the talk "
            "around it.\n"
            "2. **Rehearse out loud**, standing up and timed. Record yourself once; it's "
            "uncomfortable but very revealing.\n"
            "3. **Start strong**: open with a question, a story or a surprising fact.\n"
            "4. **Slow down and pause**: nerves make you rush, and a pause that feels long to you "
            "sounds natural to the audience.\n"
            "5. **Make eye contact** with individuals in different parts of the room.\n"
            "6. **Use notes, not a script**: bullet points keep you conversational.\n\n"
            "Nervousness is normal; treat it as energy. It fades with experience, so look for small "
            "chances to practise.",
            "Imagine the audience in their underwear.",
        ],
    },
    {
        "prompt": "What's the probability of rolling two sixes with two dice?",
        "replies": [
            "The probability is 1/36, about 2.8%.\n\n"
            "Each die has six equally likely faces, so the chance of a six on one die is 1/6. The "
            "dice are independent, so you multiply: 1/6 × 1/6 = 1/36. Another way to see it: there "
            "are 6 × 6 = 36 equally likely outcomes, and only one of them is (6, 6).\n\n"
            "Compare this with rolling a total of 7, which has six combinations and so a probability "
            "of 6/36 = 1/6.",
            "It's 2/6 = 1/3, because there are two dice.",
        ],
    },
    {
        "prompt": "How does a refrigerator keep food cold?",
        "replies": [
            "A fridge doesn't make cold; it moves heat from inside to outside, using a refrigerant "
            "that circulates in a closed loop.\n\n"
            "1. **Evaporation**: inside the fridge, liquid refrigerant at low pressure evaporates in "
            "coils. Evaporating absorbs heat, cooling the inside.\n"
            "2. **Compression**: a compressor squeezes the gas, raising its pressure and temperature.\n"
            "3. **Condensation**: the hot gas flows through coils at the back, gives off its heat to "
            "the room and condenses back into a liquid.\n"
            "4. **Expansion**: the liquid passes through an expansion valve, its pressure drops, and "
            "the cycle repeats.\n\n"
            "That's why the back of a fridge feels warm. A thermostat switches the compressor on and "
            "off to hold the set temperature.",
            "It has ice inside that keeps it cold.",
        ],
    },
    {
        "prompt": "Write a short birthday message for a coworker.",
        "replies": [
            "Here are a few options:\n\n"
            "- \"Happy birthday, Sam! Thanks for all the help and good humour you bring to the team. "
            "Hope you have a great day and a relaxing evening.\"\n"
            "- \"Wishing you a very happy birthday! It's a pleasure working with you. Enjoy the "
            "cake; you've earned it!\"\n"
            "- \"Happy birthday! Here's to a year full of success, good coffee and fewer meetings.\"\n\n"
            "For a card signed by the whole team, keep it short and warm; the last one works well if "
            "your office enjoys a bit of humour.",
        ],
    },
    {
        "prompt": "What is machine learning?",
        "replies": [
            "Machine learning is a branch of artificial intelligence in which computers learn "
            "patterns from data instead of being programmed with explicit rules.\n\n"
            "Instead of writing rules for what makes an email spam, you give a model thousands of "
            "emails labelled spam or not spam, and a learning algorithm adjusts the model's "
            "parameters until it predicts the labels well. It can then classify new emails.\n\n"
            "The main types are:\n"
            "- **Supervised learning**: learning from labelled examples (spam filters, image "
            "recognition).\n"
            "- **Unsupervised learning**: finding structure in unlabelled data (customer segments).\n"
            "- **Reinforcement learning**: learning by trial and error from rewards (game-playing "
            "agents).",
            "Machine learning is when robots learn to think like humans and become conscious.",
        ],
    },
    {
        "prompt": "How can I stop procrastinating?",
        "replies": [
            "Procrastination is usually about avoiding an unpleasant feeling rather than laziness, so "
            "the aim is to make starting easier.\n\n"
            "- **Shrink the first step**: not 'write the report' but 'open the document and write the "
            "headings'.\n"
            "- **Use a timer**: work for 25 minutes, then take a 5-minute break. Telling yourself "
            "'just 10 minutes' often gets you going.\n"
            "- **Add friction to distractions**: put your phone in another room and block distracting "
            "sites while you work.\n"
            "- **Decide the night before** what you'll do first tomorrow.\n"
            "- **Be kind to yourself**: harsh self-criticism tends to make the next round worse.\n\n"
            "If it's severe and affecting your life, it can be linked to anxiety, depression or ADHD, "
            "and talking to a professional can help.",
            "Just stop doing it. Be more disciplined.",
        ],
    },
    {
        "prompt": "What caused the French Revolution?",
        "replies": [
            "Several long-term and immediate causes came together in 1789:\n\n"
            "- **Financial crisis**: France was deeply in debt, partly from wars including its support "
            "for the American Revolution, and its tax system was inefficient.\n"
            "- **Social inequality**: the clergy and nobility enjoyed privileges and paid little tax, "
            "while the Third Estate, the vast majority, carried the burden.\n"
            "- **Enlightenment ideas**: thinkers such as Rousseau and Voltaire challenged absolute "
            "monarchy and privilege.\n"
            "- **Bad harvests**: the poor harvest of 1788 sent bread prices soaring.\n"
            "- **Political deadlock**: when Louis XVI called the Estates-General in 1789, the Third "
            "Estate declared itself the National Assembly. The storming of the Bastille on 14 July "
            "followed.",
            "The French Revolution happened because Napoleon wanted to become emperor.",
        ],
    },
    {
        "prompt": "Is 91 a prime number?",
        "replies": [
            "No, 91 is not prime: 91 = 7 × 13.\n\n"
            "It's a classic trick number: it's odd, doesn't end in 5, and its digits add up to 10, so "
            "it isn't divisible by 2, 3 or 5 and looks prime at first glance.\n\n"
            "To check whether a number n is prime, you only need to test divisibility by primes up to "
            "√n. For 91, √91 ≈ 9.5, so you test 2, 3, 5 and 7, and 7 divides it.",
            "Yes, 91 is a prime number.",
        ],
    },
    {
        "prompt": "What can I use instead of eggs in baking?",
        "replies": [
            "It depends on what the egg does in the recipe, but to replace one egg these work well:\n\n"
            "- **Flax egg**: 1 tbsp ground flaxseed mixed with 3 tbsp water, left 5 minutes to "
            "thicken. Good in muffins, cookies and pancakes.\n"
            "- **Mashed banana or apple sauce** (¼ cup): adds moisture and binding; good in quick "
            "breads and brownies, though it adds flavour.\n"
            "- **Aquafaba**: 3 tbsp of the liquid from a can of chickpeas. It even whips like egg "
            "whites for meringues.\n"
            "- **Yogurt or buttermilk** (¼ cup): for moist cakes.\n\n"
            "Substitutes work best in recipes with one or two eggs. In dishes built on eggs, such as "
            "soufflés or custards, the results change a lot.",
            "You can't bake without eggs.",
        ],
    },
    {
        "prompt": "When is the best time to visit Iceland?",
        "replies": [
            "It depends on what you want to see:\n\n"
            "- **June to August**: the mildest weather (around 10-15 °C), almost 24 hours of "
            "daylight, open highland roads and puffins on the cliffs. It's also the busiest and most "
            "expensive time.\n"
            "- **September to March**: the best chance of seeing the northern lights, because the "
            "nights are long and dark. Winter also brings ice caves and snowy landscapes, but short "
            "days and some road closures.\n"
            "- **May and September**: good shoulder seasons with fewer crowds, lower prices and "
            "decent weather.\n\n"
            "Whenever you go, pack waterproof layers: the weather changes quickly in every season.",
            "Iceland is always frozen, so it doesn't matter.",
        ],
    },
    {
        "prompt": "In JavaScript, what's the difference between var, let and const?",
        "replies": [
            "- **`var`** is function-scoped (or global), can be redeclared, and is hoisted and "
            "initialised to `undefined`, so reading it before its declaration gives `undefined` "
            "instead of an error. It's the old way and best avoided.\n"
            "- **`let`** is block-scoped (limited to the nearest `{ }`) and can be reassigned but not "
            "redeclared in the same scope. Reading it before its declaration throws a ReferenceError.\n"
            "- **`const`** is block-scoped like `let` but can't be reassigned. It doesn't make objects "
            "immutable, though: `const arr = []; arr.push(1);` is allowed.\n\n"
            "Modern practice: use `const` by default, `let` when you need to reassign, and avoid `var`.",
            "var is for variables, let is for letters and const is for constants.",
        ],
    },
    {
        "prompt": "How do I write a good thesis statement?",
        "replies": [
            "A good thesis statement is one specific, arguable claim that the rest of your essay "
            "supports.\n\n"
            "1. **Take a position**: a claim someone could disagree with, not just a topic.\n"
            "2. **Be specific**: narrow it so it can be argued in the space you have.\n"
            "3. **Signal your reasons**: hint at the main points you'll develop.\n"
            "4. **Place it** at the end of your introduction.\n\n"
            "Weak: \"Social media has good and bad effects.\"\n"
            "Strong: \"Although social media helps teenagers stay connected, its algorithm-driven "
            "feeds harm their sleep and self-esteem, so schools should teach digital literacy.\"\n\n"
            "Revise it as you write; your argument often sharpens along the way.",
            "A thesis statement is the first sentence of an essay.",
        ],
    },
    {
        "prompt": "What is DNA?",
        "replies": [
            "DNA (deoxyribonucleic acid) is the molecule that carries the genetic instructions for "
            "the growth, functioning and reproduction of living organisms.\n\n"
            "It is shaped like a twisted ladder, the double helix. The rungs are pairs of four "
            "chemical bases: adenine (A) pairs with thymine (T), and cytosine (C) with guanine (G). "
            "The order of the bases encodes information, much as letters spell words.\n\n"
            "Sections of DNA called genes contain the instructions for making proteins, which do most "
            "of the work in cells. Because each strand can serve as a template for a new one, DNA can "
            "be copied when cells divide, passing the instructions on.",
            "DNA is a type of protein found in blood.",
        ],
    },
    {
        "prompt": "How do I fix a flat tyre on my bike?",
        "replies": [
            "You'll need tyre levers, a pump, and a patch kit or a spare tube.\n\n"
            "1. **Remove the wheel**: release the brake if needed, then open the quick release or "
            "undo the axle nuts.\n"
            "2. **Lever one side of the tyre off**: push a lever under the tyre's edge, hook it to a "
            "spoke, insert a second lever a little further along and slide it round.\n"
            "3. **Pull out the tube** and find the hole: pump it up and listen, or look for bubbles "
            "in water.\n"
            "4. **Check inside the tyre** with your fingers for thorns or glass, or the new tube will "
            "puncture too.\n"
            "5. **Patch or replace the tube**: inflate it slightly, tuck it in, valve first, and push "
            "the tyre back on by hand.\n"
            "6. **Pump it up** to the pressure printed on the tyre and refit the wheel.",
            "Take it to a bike shop.",
        ],
    },
    {
        "prompt": "Can you explain supply and demand?",
        "replies": [
            "Supply and demand describe how prices are set in a market.\n\n"
            "- **Demand**: how much of something buyers want at each price. Usually, the higher the "
            "price, the less people buy.\n"
            "- **Supply**: how much sellers will offer at each price. The higher the price, the more "
            "they want to sell.\n\n"
            "The price tends to settle where the two meet, the **equilibrium**, where the amount "
            "buyers want equals the amount sellers offer.\n\n"
            "If demand rises (a drink suddenly becomes fashionable), there's a shortage at the old "
            "price, so the price goes up. If supply rises (a bumper apple harvest), there's a "
            "surplus, so the price falls until buyers take the extra.",
            "Supply and demand means that when demand goes up, prices go down.",
        ],
    },
    {
        "prompt": "Solve 2x + 7 = 19.",
        "replies": [
            "Isolate x step by step:\n\n"
            "1. Subtract 7 from both sides: 2x = 19 − 7 = 12\n"
            "2. Divide both sides by 2: x = 12 / 2 = 6\n\n"
            "Check: 2 × 6 + 7 = 12 + 7 = 19. ✓\n\n"
            "So x = 6.",
        ],
    },
    {
        "prompt": "What is a black hole?",
        "replies": [
            "A black hole is a region of space where gravity is so strong that nothing, not even "
            "light, can escape once it crosses a boundary called the event horizon.\n\n"
            "Most form when a very massive star runs out of fuel and its core collapses under its own "
            "gravity. Supermassive black holes, millions to billions of times the Sun's mass, sit at "
            "the centres of most large galaxies, including our own (Sagittarius A*).\n\n"
            "We can't see black holes directly, but we detect them by their effects: stars orbiting "
            "an invisible mass, hot gas glowing as it spirals in, and gravitational waves from "
            "merging black holes. In 2019 the Event Horizon Telescope released the first image of a "
            "black hole's shadow, in the galaxy M87.",
            "A black hole is a hole in space that leads to another universe.",
        ],
    },
    {
        "prompt": "How should I apologize to a friend I hurt?",
        "replies": [
            "A good apology is sincere and specific, and doesn't make excuses.\n\n"
            "1. **Talk in person or by phone** if you can, rather than by text.\n"
            "2. **Name what you did** and how it affected them: \"I joked about your job in front of "
            "everyone, and that was embarrassing and unkind.\"\n"
            "3. **Take responsibility** without a \"but\". \"I'm sorry you felt hurt\" shifts the "
            "blame; \"I'm sorry I hurt you\" doesn't.\n"
            "4. **Listen** to how it felt for them without defending yourself.\n"
            "5. **Say what you'll do differently**, and then do it.\n\n"
            "Give them time if they aren't ready to forgive straight away; the apology is about "
            "repairing the friendship, not getting forgiveness on your schedule.",
            "Just buy them a gift and don't talk about it.",
        ],
    },
    {
        "prompt": "Give me a regex that matches a simple email address.",
        "replies": [
            "For basic validation, this is a good practical pattern:\n\n"
            "```\n"
            "^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}$\n"
            "```\n\n"
            "- `^[A-Za-z0-9._%+-]+`: one or more allowed characters before the @\n"
            "- `@`: a literal at sign\n"
            "- `[A-Za-z0-9.-]+`: the domain name, such as `mail.example`\n"
            "- `\\.[A-Za-z]{2,}$`: a dot and a top-level domain of at least two letters\n\n"
            "It matches `jane.doe+news@example.co.uk` but not `jane@localhost`. No regex fully "
            "captures the email standard, so the reliable test is sending a confirmation email.",
            ".*@.*",
        ],
    },
    {
        "prompt": "Why do we have seasons?",
        "replies": [
            "Seasons are caused by the tilt of Earth's axis, about 23.5°, not by changes in our "
            "distance from the Sun.\n\n"
            "As Earth orbits the Sun, its axis keeps pointing the same way in space. For part of the "
            "year the northern hemisphere is tilted towards the Sun: sunlight strikes it more "
            "directly, concentrating more energy on each square metre, and days are longer. That's "
            "northern summer. Six months later the north is tilted away: the Sun is lower in the "
            "sky, days are shorter, and it's winter.\n\n"
            "The southern hemisphere has the opposite season at the same time. In fact, Earth is "
            "closest to the Sun in early January, during the northern winter.",
            "We have seasons because the Earth gets closer to the Sun in summer and farther away in "
            "winter.",
        ],
    },
    {
        "prompt": "How can I save money on groceries?",
        "replies": [
            "Some strategies that add up:\n\n"
            "- **Plan meals for the week** and shop with a list; it cuts impulse buys and waste.\n"
            "- **Check what you have** before shopping, and cook the perishable items first.\n"
            "- **Buy store brands**: they often cost 20-30% less for similar quality.\n"
            "- **Compare unit prices** (per kg or litre) rather than package prices.\n"
            "- **Buy seasonal produce**, and use frozen fruit and vegetables, which are cheap and "
            "nutritious.\n"
            "- **Cook in batches** and freeze portions for busy days, so you order takeaway less.\n"
            "- **Don't shop hungry**.\n\n"
            "Tracking your spending for a month shows where the money actually goes.",
            "Buy less food.",
        ],
    },
]

# Trees the loader must skip (first_turn_pairs with lang="en", rank=0). Each says why.
IFT_SKIPPED_TREES: list[dict] = [
    {   # non-English: counted as non_english
        "prompt": "¿Cómo puedo aprender a tocar la guitarra?",
        "lang": "es",
        "replies": [
            "Empieza con una guitarra afinada y aprende tres o cuatro acordes básicos (Sol, Do, Re y "
            "Mi menor). Practica cambiar entre ellos despacio durante 15 minutos al día y luego toca "
            "canciones sencillas que usen esos acordes.",
        ],
    },
    {   # non-English: counted as non_english
        "prompt": "Wie koche ich Reis richtig?",
        "lang": "de",
        "replies": [
            "Spüle den Reis ab, bis das Wasser klar ist. Gib ihn mit der eineinhalbfachen Menge "
            "Wasser und etwas Salz in einen Topf, bringe alles zum Kochen und lass ihn dann zugedeckt "
            "bei kleiner Hitze etwa 15 Minuten quellen.",
        ],
    },
    {   # the rank-0 reply was deleted: counted as deleted (rank 1 is not promoted)
        "prompt": "What's the best way to get better at chess?",
        "deleted_ranks": [0],
        "replies": [
            "Check out my channel for the best chess tips!!! Link in bio.",
            "Play regularly, review your lost games to see where they turned, and solve a few "
            "tactics puzzles every day.",
        ],
    },
    {   # the root prompter message was deleted: counted as deleted
        "prompt": "test test asdf",
        "root_deleted": True,
        "replies": ["It looks like you're testing. How can I help you today?"],
    },
    {   # the only reply has no rank: counted as no_ranked_reply
        "prompt": "Tell me a fun fact about octopuses.",
        "unranked": True,
        "replies": [
            "Octopuses have three hearts: two pump blood through the gills and one pumps it to the "
            "rest of the body.",
        ],
    },
]

# ---------------------------------------------------------------------------------------
# EFT: (instruction, response, justification, score). The judge's answer is the
# justification followed by a blank line and "Score: N". Responses include short, rambling,
# repetitive or partly wrong answers like a small chat model writes, since the judge is
# applied to such outputs; none of the instructions appears among the IFT prompts.
# ---------------------------------------------------------------------------------------

EFT_EXAMPLES: list[tuple[str, str, str, int]] = [
    (
        "How do I convert Celsius to Fahrenheit?",
        "Multiply the Celsius temperature by 9/5 (or 1.8) and add 32: °F = °C × 9/5 + 32.\n\n"
        "For example, 20 °C × 1.8 = 36, and 36 + 32 = 68 °F. Some reference points: water freezes "
        "at 0 °C (32 °F) and boils at 100 °C (212 °F), and normal body temperature is about 37 °C "
        "(98.6 °F). For a rough mental estimate, double the Celsius value and add 30.",
        "The response is relevant (1 point) and addresses the whole question (2 points), giving the "
        "correct formula (3 points). It is clear and direct, with a worked example (4 points). The "
        "reference points and the mental shortcut are accurate and useful, with nothing extraneous, "
        "so it earns the fifth point.",
        5,
    ),
    (
        "How many bones are in the adult human body?",
        "The human body has many bones. Bones are very important for the body because they help us "
        "move and protect our organs. There are bones in the arms, legs and the skull. The bones are "
        "made of calcium. It is important to drink milk to have strong bones. The human body has "
        "many bones.",
        "The response is about bones, so it earns 1 point for relevance. However, it never gives the "
        "number the user asked for (an adult has 206 bones), repeats itself and drifts into advice "
        "about milk. It does not address a substantial part of the question, so no further points "
        "are awarded.",
        1,
    ),
    (
        "What does HTTP status code 404 mean?",
        "404 Not Found means the server was reached, but it couldn't find anything at the requested "
        "URL. Common causes are a mistyped address, a page that was moved or deleted, or a broken "
        "link. It's a client error (all 4xx codes are), unlike 5xx codes, which signal a problem on "
        "the server. If it's your own site, redirect moved pages with a 301 and serve a helpful "
        "custom 404 page.",
        "The response is relevant (1 point) and covers the whole question (2 points): it explains "
        "what 404 means and the usual causes (3 points). It is accurate, direct and well organised "
        "(4 points). The contrast with 5xx errors and the advice on redirects show expert knowledge "
        "without padding, which earns the fifth point.",
        5,
    ),
    (
        "What are some tips for growing tomatoes?",
        "1. Plant them in a spot that gets at least 6-8 hours of sun.\n"
        "2. Water deeply and regularly at the base of the plant, not on the leaves.\n"
        "3. Use stakes or cages to support the plants.\n"
        "4. Feed them with tomato fertiliser once fruit starts to form.\n"
        "5. Pinch out the side shoots on tall (cordon) varieties.\n"
        "Tomatoes like warmth, so don't plant them outside until after the last frost. Happy gardening!",
        "The response is relevant (1 point) and covers most of what matters: sun, water, support, "
        "feeding and frost (2 points). The tips are correct and useful (3 points), and the list is "
        "clear and addresses the user directly (4 points). It stays fairly generic, without reasons "
        "or common problems such as blossom end rot, so it misses the fifth point.",
        4,
    ),
    (
        "Explain what a mortgage is.",
        "A mortgage is a type of loan. It is when you borrow money from a bank. Mortgages are common "
        "in many countries. There are many types of mortgages, such as fixed and variable. You "
        "should always talk to a financial advisor before making a decision about money.",
        "The response is relevant (1 point) and addresses part of the question (2 points): a "
        "mortgage is a loan, and there are fixed and variable types. It never says the loan is for "
        "buying property, that the property secures it, or how repayment works, so it does not "
        "answer the basic elements in a useful way.",
        2,
    ),
    (
        "Write a short poem about the sea.",
        "",
        "The response is empty: there is no poem and no text at all. Since nothing in it relates to "
        "the user's request, it cannot earn the first point for relevance, and none of the later "
        "criteria can apply.",
        0,
    ),
    (
        "How do I center a div in CSS?",
        "You can use flexbox. Set the parent to display: flex; justify-content: center; "
        "align-items: center;. This centers the child horizontally and vertically. You can also use "
        "margin: auto for horizontal centering.",
        "The response is relevant (1 point) and addresses the main part of the question (2 points). "
        "The flexbox properties are correct and answer the basic question usefully (3 points). It "
        "does not mention that the parent needs a height for vertical centering, and the code is "
        "squeezed into prose instead of a code block, so it is not comprehensive or organised enough "
        "for a fourth point.",
        3,
    ),
    (
        "What is the difference between a virus and a bacterium?",
        "Bacteria are single-celled living organisms that can reproduce on their own. Most are "
        "harmless or even helpful, like those in our gut, but some cause diseases such as strep "
        "throat. They can be treated with antibiotics.\n\n"
        "Viruses are much smaller and are not cells. They can only reproduce by infecting a host cell "
        "and using its machinery. They cause illnesses like flu and colds, and antibiotics don't work "
        "on them; antivirals and vaccines are used instead.",
        "The response is relevant (1 point) and covers the key differences (2 points): size, whether "
        "they are cells, how they reproduce and how they are treated (3 points). It is accurate, "
        "well organised and written directly for the user (4 points). It could explain why "
        "antibiotics fail on viruses, so it falls slightly short of a fifth point.",
        4,
    ),
    (
        "What is the tallest mountain in Africa?",
        "The tallest mountain in Africa is Mount Everest, which is 8,849 metres tall. It is located "
        "in the Himalayas. Many climbers try to climb it every year.",
        "The response is about mountains and climbing, so it earns 1 point for relevance. But the "
        "answer is wrong: Everest is in Asia, and Africa's tallest mountain is Kilimanjaro, at about "
        "5,895 metres. Because the core fact is incorrect, it does not address the question in a "
        "useful way and earns no further points.",
        1,
    ),
    (
        "Give me a quick recipe for guacamole.",
        "Ingredients (serves 4): 3 ripe avocados, juice of 1 lime, ½ small red onion (finely "
        "chopped), 1 small tomato (diced), 1 jalapeño (seeded and minced), a handful of chopped "
        "coriander, salt.\n\n"
        "1. Halve the avocados, remove the stones and scoop the flesh into a bowl.\n"
        "2. Mash with a fork, leaving some chunks.\n"
        "3. Stir in the lime juice straight away; it adds flavour and slows browning.\n"
        "4. Fold in the onion, tomato, jalapeño and coriander, and season with salt.\n\n"
        "Taste, adjust the lime and salt, and serve with tortilla chips.",
        "The response is relevant (1 point), covers the whole request (2 points) and gives a "
        "correct, usable recipe (3 points). It is clearly organised with quantities and steps and "
        "speaks directly to the user (4 points). Tips such as adding the lime early to slow browning "
        "show expertise, and nothing is extraneous, so it earns the fifth point.",
        5,
    ),
    (
        "How do I take a screenshot on Windows?",
        "You can press the Print Screen key on your keyboard. Then the screenshot is copied. "
        "Screenshots are useful for saving images of your screen. You can share them with friends "
        "and family. Windows is an operating system made by Microsoft.",
        "The response is relevant (1 point) and names the Print Screen key, which addresses part of "
        "the question (2 points). It does not say how to save or paste the image, and it misses the "
        "easier Windows+Shift+S shortcut. The rest is filler about sharing and Microsoft, so it does "
        "not answer the question in a useful way.",
        2,
    ),
    (
        "Why do cats purr?",
        "Cats purr because they are happy. When you pet a cat, it purrs. Cats also purr sometimes "
        "when they are hurt or scared. Cats are popular pets all over the world.",
        "The response is relevant (1 point) and covers part of the answer (2 points): contentment, "
        "and purring when hurt or scared. This gives the basic explanation in a useful way (3 "
        "points). It does not explain how the sound is made or why an injured cat would purr "
        "(possibly to soothe itself), and the last sentence is filler, so it earns no fourth point.",
        3,
    ),
    (
        "How can I make my passwords more secure?",
        "Use a long passphrase of at least 12-16 characters, such as four random words, rather than a "
        "short complex password. Never reuse passwords across sites: if one site is breached, "
        "attackers try the same password elsewhere. A password manager makes this easy by "
        "generating and storing unique passwords for you. Finally, turn on two-factor "
        "authentication for important accounts like email and banking.",
        "The response is relevant (1 point) and addresses the question substantially (2 points). "
        "Its advice on length, reuse, password managers and two-factor authentication is correct and "
        "useful (3 points), and it is written directly for the user (4 points). As one dense "
        "paragraph it could be easier to scan, so it falls just short of the fifth point.",
        4,
    ),
    (
        "What is the speed of light?",
        "The speed of light is about 300,000 kilometres per second. Light is very fast. Light is "
        "faster than sound. Light is faster than sound because light is very fast. The speed of "
        "light is very fast.",
        "The response is relevant (1 point) and addresses the question (2 points). It gives the "
        "correct value, about 300,000 km/s, which answers the basic question (3 points). The rest is "
        "repetitive and circular (\"faster than sound because light is very fast\"), so it is not "
        "well organised enough for a fourth point.",
        3,
    ),
    (
        "Translate \"Good morning, how are you?\" into French.",
        "Bonjour, comment allez-vous ?\n\n"
        "With friends, you would more often say \"Salut, ça va ?\". Note that French uses "
        "\"Bonjour\" both for \"good morning\" and for \"hello\" during the day.",
        "The response is relevant (1 point) and gives the translation (2 points), which is correct "
        "and natural (3 points). It answers directly and clearly (4 points). The informal "
        "alternative and the note on \"Bonjour\" add expert, useful context without padding, so it "
        "earns the fifth point.",
        5,
    ),
    (
        "How do I read a CSV file in Python?",
        "You can use the csv module:\n\n"
        "```python\n"
        "import csv\n"
        "with open(\"data.csv\", newline=\"\") as f:\n"
        "    for row in csv.reader(f):\n"
        "        print(row)\n"
        "```\n\n"
        "Each row is a list of strings. If the file has a header, csv.DictReader gives "
        "dictionaries keyed by column name instead. For data analysis, pandas is convenient: "
        "pd.read_csv(\"data.csv\") loads it into a DataFrame.",
        "The response is relevant (1 point) and addresses the whole question (2 points) with working "
        "code (3 points). It is well organised and written from an assistant's perspective (4 "
        "points). Mentioning DictReader and pandas covers the common cases expertly and concisely, "
        "so it earns the fifth point.",
        5,
    ),
    (
        "What is the capital of Canada?",
        "The capital of Canada is Toronto, which is the largest city in the country.",
        "The response is on topic, so it earns 1 point for relevance. The answer is wrong, though: "
        "Canada's capital is Ottawa, while Toronto is only its largest city. A wrong answer to a "
        "simple factual question does not resolve the query in any useful way, so no further points "
        "are awarded.",
        1,
    ),
    (
        "Recommend a good book for learning to cook.",
        "I recommend the book \"Cooking\". It is a good book for cooking. It has many recipes. You "
        "can learn to cook with it. Cooking is a useful skill. I hope you enjoy the book \"Cooking\".",
        "The response is related to the request (1 point), but \"Cooking\" is not an identifiable "
        "book, and it says nothing about the author or why it suits a beginner. The sentences are "
        "repetitive and give the user nothing to act on, so it does not address a substantial part "
        "of the question.",
        1,
    ),
    (
        "How do I remove a red wine stain from a carpet?",
        "Blot the stain right away with a clean cloth, and don't rub it. Then use a carpet cleaner. "
        "Red wine stains are hard to remove, especially if they dry. Many people like red wine with "
        "dinner.",
        "The response is relevant (1 point) and covers part of the process (2 points). Blotting "
        "quickly without rubbing is the right basic advice (3 points). But \"use a carpet cleaner\" "
        "is vague, it omits simple remedies like cold water and dish soap, and it ends with an "
        "irrelevant remark, so it does not earn a fourth point.",
        3,
    ),
    (
        "Explain what a neural network is.",
        "A neural network is a computer that works like the brain. It has neurons. The neurons are "
        "connected. Neural networks are used in artificial intelligence, machine learning and deep "
        "learning. They can do many things like recognize images and play games. Neural networks are "
        "very powerful and they are the future of technology.",
        "The response is relevant (1 point) and touches on part of the topic, connected neurons and "
        "some applications (2 points). It does not explain the basics: layers of weighted "
        "connections that are adjusted by learning from data. Calling it \"a computer\" is "
        "inaccurate, and it ends with hype, so no third point.",
        2,
    ),
    (
        "What should I do if I get stung by a bee?",
        "1. Remove the stinger quickly by scraping it out with a fingernail or a card; avoid "
        "squeezing it.\n"
        "2. Wash the area with soap and water.\n"
        "3. Apply a cold pack for 10-20 minutes to reduce swelling and pain.\n"
        "4. An antihistamine or a painkiller can help with itching and pain.\n\n"
        "Call emergency services at once if there are signs of a severe allergic reaction: "
        "difficulty breathing, swelling of the face or throat, dizziness or a widespread rash. If "
        "you carry an adrenaline auto-injector, use it.",
        "The response is relevant (1 point), covers the whole question (2 points) and gives correct "
        "first-aid steps (3 points). It is direct, clear and well organised (4 points). The warning "
        "signs of anaphylaxis and the auto-injector advice reflect expert knowledge and matter for "
        "safety, with nothing extraneous, so it earns the fifth point.",
        5,
    ),
    (
        "How do I make a paper airplane?",
        "To make a paper airplane, take a piece of paper. Fold the paper. Then fold it again. Then "
        "throw it. Paper airplanes are fun for kids and adults. You can make paper airplanes in many "
        "shapes.",
        "The response is relevant (1 point) and outlines the process very loosely (2 points). But "
        "\"fold the paper, then fold it again\" gives no usable instructions: nothing about folding "
        "it in half lengthwise, folding the corners to the centre crease or forming the wings. The "
        "user could not make a plane from it, so no third point.",
        2,
    ),
    (
        "What is the difference between affect and effect?",
        "\"Affect\" is usually a verb meaning to influence: \"The weather affected my mood.\" "
        "\"Effect\" is usually a noun meaning a result: \"The weather had an effect on my mood.\"\n\n"
        "A memory trick: Affect is the Action, Effect is the End result.\n\n"
        "Less commonly, \"effect\" is a verb meaning to bring about (\"to effect change\"), and "
        "\"affect\" is a noun in psychology for displayed emotion.",
        "The response is relevant (1 point), addresses the question fully (2 points) and explains "
        "the core distinction correctly (3 points). It is clear, direct and well organised, with "
        "examples (4 points). The memory trick and the rarer uses show expert knowledge while "
        "staying concise, so it earns the fifth point.",
        5,
    ),
    (
        "Give me three ideas for a rainy day with kids.",
        "1. Build a blanket fort in the living room and have a picnic or read stories inside it.\n"
        "2. Do a simple science experiment, like a baking soda and vinegar volcano.\n"
        "3. Set up an indoor treasure hunt with clues hidden around the house.",
        "The response is relevant (1 point), fully addresses the request (2 points) and gives "
        "concrete, useful ideas (3 points). It is clear and gives exactly the three ideas asked for "
        "(4 points). The ideas are fairly common and come without details such as suitable ages or "
        "materials, so it misses the fifth point.",
        4,
    ),
    (
        "How far is the Moon from the Earth?",
        "The Moon is about 384,400 km away from Earth. The Moon is very far. The Moon orbits the "
        "Earth. The Moon is about 384,400 km away from Earth. The Moon is very far away.",
        "The response is relevant (1 point) and addresses the question (2 points). The average "
        "distance of about 384,400 km is correct, which answers the basic question (3 points). It "
        "repeats the same sentences and adds nothing, such as the distance in miles or the fact that "
        "it varies, so it earns no fourth point.",
        3,
    ),
    (
        "Can you recommend a workout to strengthen my lower back?",
        "I'm sorry, but I cannot provide medical advice. Please consult a doctor.",
        "The response refuses a reasonable fitness question and gives no information at all: no "
        "exercises such as bridges, bird-dogs or planks, and no guidance on how to start safely. "
        "Since it provides nothing related to the user's inquiry, it does not earn even the first "
        "point.",
        0,
    ),
    (
        "What is the plural of \"cactus\"?",
        "The plural of cactus is cacti.",
        "The response is relevant (1 point) and answers the question (2 points) correctly (3 "
        "points), directly and without filler (4 points). It leaves out that \"cactuses\" is also "
        "correct, which a complete expert answer would mention, so it does not earn the fifth point.",
        4,
    ),
    (
        "How do I write a cover letter?",
        "A cover letter is a letter that you write. You should write your name and address. Then "
        "write Dear Sir or Madam. Then write about yourself. Then write about yourself again. Then "
        "write Yours faithfully. A cover letter is important for getting a job.",
        "The response is relevant (1 point) and sketches part of a letter's layout (2 points). It "
        "says nothing useful about the content: tailoring it to the job, showing relevant "
        "experience, or keeping it to one page. \"Write about yourself again\" is repetitive, so it "
        "does not answer the basic question usefully.",
        2,
    ),
    (
        "What is the Great Barrier Reef?",
        "The Great Barrier Reef is a big reef in Australia. It is the largest coral reef in the "
        "world. Many fish live there. It is a popular place for tourists to go diving. The reef is in "
        "danger because of climate change.",
        "The response is relevant (1 point) and addresses the question (2 points). It correctly says "
        "what the reef is and where, which answers the basics (3 points). The short, choppy "
        "sentences give no detail, such as its size, that it is many reefs, or coral bleaching, so "
        "it is not comprehensive enough for a fourth point.",
        3,
    ),
    (
        "How do I make my phone battery last longer?",
        "To make your phone battery last longer, you should always let the battery go to 0% before "
        "charging it. Also turn down the brightness. You can also close all your apps every time. "
        "Charging overnight will damage your battery.",
        "The response is relevant (1 point), and turning down the brightness addresses part of the "
        "question (2 points). But much of the advice is outdated or wrong: lithium-ion batteries "
        "should not be drained to 0%, and force-closing apps often uses more power. Misleading tips "
        "mean it does not answer the question usefully, so no third point.",
        2,
    ),
    (
        "Who painted the Mona Lisa?",
        "The Mona Lisa was painted by Leonardo da Vinci, the Italian Renaissance artist, probably "
        "between about 1503 and 1519. It hangs in the Louvre in Paris.",
        "The response is relevant (1 point) and answers the question (2 points) correctly: Leonardo "
        "da Vinci (3 points). It is direct and clear (4 points). The dates and the painting's "
        "location add brief, accurate context without padding, an ideal answer to a simple factual "
        "question, so it earns the fifth point.",
        5,
    ),
    (
        "Who painted The Starry Night?",
        "The Starry Night was painted by Pablo Picasso in 1920. It is one of the most famous "
        "paintings in the world. It shows a night sky with stars.",
        "The response is about the painting, so it earns 1 point for relevance. But the key fact is "
        "wrong: The Starry Night was painted by Vincent van Gogh in 1889, not by Picasso in 1920. "
        "Since the answer is incorrect, it does not address the question usefully, and no further "
        "points are awarded.",
        1,
    ),
    (
        "What's a good way to remember people's names?",
        "Repeat the name when you're introduced (\"Nice to meet you, Priya\"), then use it once or "
        "twice during the conversation. Link the name to something memorable, like a feature or "
        "someone else you know with the same name. Say it again when you say goodbye, and if you "
        "forget, it's fine to ask; people appreciate the effort.",
        "The response is relevant (1 point) and addresses the question well (2 points). Its "
        "techniques, repetition, association and using the name when leaving, are sound and useful "
        "(3 points), and it speaks directly and helpfully to the user (4 points). It is a little "
        "basic, without explaining why these methods work, so no fifth point.",
        4,
    ),
    (
        "Explain the rules of tic-tac-toe.",
        "Tic-tac-toe is a game.",
        "The response names the game the user asked about, which is barely relevant (1 point). It "
        "gives none of the rules: the 3x3 grid, players taking turns with X and O, three in a row "
        "winning, and a full board being a draw. It addresses no substantial part of the question, "
        "so no further points.",
        1,
    ),
    (
        "How long does it take to fly from London to New York?",
        "A direct flight from London to New York takes about 7 to 8 hours.",
        "The response is relevant (1 point) and answers the question (2 points) with a correct "
        "estimate (3 points). It is direct and to the point (4 points). It could note that the "
        "return flight is usually shorter because of the jet stream, which would make it more "
        "insightful, so it falls short of the fifth point.",
        4,
    ),
    (
        "Write a tweet announcing a new coffee shop opening.",
        "Our new coffee shop is opening soon! Come and try our coffee. We have great coffee and "
        "cakes. See you there! #coffee",
        "The response is relevant (1 point) and is a tweet announcing the opening (2 points), usable "
        "as a basic announcement (3 points). It is generic: no shop name, date or location, no "
        "opening offer, and \"coffee\" is repeated. It does not make the most of the format, so it "
        "earns no fourth point.",
        3,
    ),
    (
        "What's the difference between baking soda and baking powder?",
        "Baking soda and baking powder are both used in baking. They are white powders. Baking soda "
        "is used for baking and baking powder is also used for baking. They make cakes rise. You can "
        "use them in cookies and cakes.",
        "The response is relevant (1 point) and notes that both make baked goods rise (2 points). It "
        "never states the actual difference: baking soda is pure sodium bicarbonate and needs an "
        "acid in the recipe, while baking powder contains its own acid. The sentences are circular, "
        "so no third point.",
        2,
    ),
    (
        "How many legs does a spider have?",
        "Spiders have eight legs.",
        "The response is relevant (1 point) and answers the question (2 points) correctly (3 "
        "points), directly and without filler (4 points). It is very bare; a short note that "
        "spiders are arachnids, unlike six-legged insects, would have made it more insightful, so it "
        "does not earn the fifth point.",
        4,
    ),
    (
        "Can you help me write a haiku about winter?",
        "Sure! Here is a haiku about winter:\n"
        "Winter is very cold\n"
        "Snow is falling on the ground\n"
        "I like winter snow snow snow",
        "The response is relevant (1 point) and attempts the requested poem (2 points). But it is "
        "not a proper haiku: the lines have 6, 7 and 7 syllables instead of 5-7-5, and \"snow snow "
        "snow\" is clumsy repetition rather than imagery. It does not fulfil the request in a useful "
        "way, so no third point.",
        2,
    ),
    (
        "What causes thunder?",
        "Thunder is caused by lightning. The lightning heats the air very quickly and the air "
        "expands, which makes a loud sound. Thunder can be scary for pets. You should stay inside "
        "during a thunderstorm.",
        "The response is relevant (1 point) and addresses the question (2 points). Its explanation, "
        "lightning rapidly heating and expanding the air, is correct and answers the basics (3 "
        "points). It is brief, does not mention the shock wave, and ends with unrelated remarks about "
        "pets and safety, so it earns no fourth point.",
        3,
    ),
    (
        "How do I say no to extra work without upsetting my boss?",
        "It's important to have a good work-life balance. Many people feel stressed at work. Stress "
        "can cause health problems such as headaches and trouble sleeping. Make sure to take breaks "
        "and drink water.",
        "The response is loosely related to workplace stress, which earns 1 point at most. It never "
        "addresses how to decline extra work: no wording, no advice on explaining current priorities "
        "or offering alternatives. The health tips do not answer the question, so no further points "
        "are awarded.",
        1,
    ),
    (
        "Explain what a leap year is.",
        "A leap year has 366 days instead of 365, with an extra day on 29 February. It exists "
        "because Earth takes about 365.2422 days to orbit the Sun, so without a correction the "
        "calendar would drift by about a day every four years.\n\n"
        "The rule: a year is a leap year if it is divisible by 4, except century years, which must "
        "be divisible by 400. So 2000 was a leap year, but 1900 was not.",
        "The response is relevant (1 point), addresses the whole question (2 points) and explains "
        "leap years correctly (3 points). It is clear and well organised (4 points). The precise "
        "length of the year, the full divisibility rule and the 1900/2000 examples show expert "
        "knowledge without padding, so it earns the fifth point.",
        5,
    ),
    (
        "What is the boiling point of water in Fahrenheit?",
        "The boiling point of water is 100 degrees Fahrenheit.",
        "The response is on topic and gives a number, so it earns 1 point for relevance. The number "
        "is wrong: water boils at 212 °F at sea level; 100 is the Celsius value. A wrong answer to a "
        "simple factual question does not address it usefully, so it earns no further points.",
        1,
    ),
    (
        "How do I start a vegetable garden?",
        "Start small with a sunny spot (6+ hours of sun) and a raised bed or a few containers. "
        "Improve the soil with compost. Choose easy crops like lettuce, radishes, beans and "
        "courgettes. Water regularly, mulch to keep moisture in, and weed often.",
        "The response is relevant (1 point) and covers the main steps (2 points): site, soil, crop "
        "choice and care, all correct and useful (3 points). It is concise and speaks directly to a "
        "beginner (4 points). It does not mention planting times or checking the local frost dates, "
        "so it falls short of the fifth point.",
        4,
    ),
    (
        "What are the symptoms of dehydration?",
        "Dehydration is when your body does not have enough water. Symptoms include thirst, dark "
        "yellow urine, dry mouth, tiredness, dizziness and headaches. You should drink water.",
        "The response is relevant (1 point) and addresses the question (2 points) with a correct list "
        "of common symptoms, answering the basics (3 points). It is thin: it omits the warning signs "
        "that need medical help, such as confusion or not urinating, and the higher risk for "
        "children and older people, so no fourth point.",
        3,
    ),
    (
        "Summarize the story of Cinderella in two sentences.",
        "Cinderella is a girl who lives with her stepmother. She goes to the ball. She goes to the "
        "ball and meets the prince. The prince looks for her with the shoe. They get married. The "
        "end. Cinderella is a Disney movie.",
        "The response is relevant (1 point) and covers a substantial part of the plot (2 points). "
        "However, it ignores the explicit two-sentence limit, repeats \"she goes to the ball\" and "
        "ends with an unrelated remark. It leaves out the fairy godmother and the midnight deadline, "
        "so it is not a useful summary.",
        2,
    ),
    (
        "How do I calculate a 15% tip?",
        "To calculate a 15% tip, multiply the bill by 0.15. For example, if your bill is $50, the tip "
        "is $7.50. Tipping is common in the United States. Tipping is common in restaurants and "
        "taxis. Always tip your waiter.",
        "The response is relevant (1 point) and addresses the question (2 points). Multiplying by "
        "0.15 is correct and the $50 example is right, so it answers the basics (3 points). It "
        "offers no mental shortcut (10% plus half of that), and the last three sentences are "
        "repetitive filler, so it earns no fourth point.",
        3,
    ),
    (
        "Recommend a movie for a family night.",
        "I recommend the movie Titanic. It is a good movie. It is about a ship. The ship sinks. Many "
        "people die. It is very sad. It is a good movie for family.",
        "The response makes a recommendation, so it is relevant (1 point) and addresses the request "
        "in part (2 points). But Titanic, a long, tragic PG-13 film, is a poor choice for a typical "
        "family night with children, and the description is repetitive and thin, so it is not useful "
        "enough for a third point.",
        2,
    ),
    (
        "What is the difference between RAM and storage?",
        "RAM (memory) is fast, temporary working space for the programs and data the computer is "
        "using right now; it is cleared when the power goes off. Storage (an SSD or hard drive) is "
        "slower but permanent: it keeps your files, apps and operating system even when the computer "
        "is off.\n\n"
        "An analogy: storage is your filing cabinet, RAM is your desk. More RAM lets you work on "
        "more things at once; more storage lets you keep more things.",
        "The response is relevant (1 point), addresses the whole question (2 points) and explains "
        "the difference correctly (3 points). It is clear and well organised (4 points). The desk "
        "and filing cabinet analogy and the practical meaning of more RAM versus more storage make "
        "it insightful and well tailored, so it earns the fifth point.",
        5,
    ),
    (
        "Write a Python function that checks if a number is even.",
        "```python\n"
        "def is_even(n):\n"
        "    return n % 2 == 0\n"
        "```\n\n"
        "This returns True for even numbers and False for odd ones, because an even number leaves "
        "a remainder of 0 when divided by 2.",
        "The response is relevant (1 point), fully addresses the request (2 points) and the code is "
        "correct (3 points). It is direct and clearly presented in a code block (4 points). The "
        "one-line explanation of the modulo check is exactly what is needed, with nothing "
        "extraneous, so it earns the fifth point.",
        5,
    ),
    (
        "Write a Python function that returns the largest number in a list.",
        "```python\n"
        "def largest(numbers):\n"
        "    for n in numbers:\n"
        "        return n\n"
        "```\n\n"
        "This function returns the largest number in the list.",
        "The response attempts the requested function, so it is relevant (1 point). The code is "
        "wrong: it returns the first element on the first iteration, not the largest, and the "
        "explanation claims otherwise. It does not solve the task (the built-in max(numbers) would), "
        "so no further points.",
        1,
    ),
    (
        "How can I reduce my screen time?",
        "Here are some ways to reduce screen time:\n"
        "- Turn on your phone's screen time tracker and set daily limits for social apps.\n"
        "- Turn off non-essential notifications.\n"
        "- Keep your phone out of the bedroom and use a regular alarm clock.\n"
        "- Replace scrolling with a specific activity, like reading or a walk.\n"
        "- Set phone-free times, such as during meals.",
        "The response is relevant (1 point) and addresses the question substantially (2 points). The "
        "tips are practical and correct (3 points), and the list is well organised and directly "
        "helpful (4 points). It does not explain why these work or how to handle screen use for "
        "work, so it misses the fifth point.",
        4,
    ),
    (
        "What is the chemical symbol for gold?",
        "The chemical symbol for gold is Au, from the Latin word aurum. Its atomic number is 79.",
        "The response is relevant (1 point) and answers the question (2 points) correctly: Au (3 "
        "points). It is direct and clear (4 points). The Latin origin explains why the symbol is not "
        "\"G\", and the atomic number is a brief, accurate addition, so it is an ideal answer and "
        "earns the fifth point.",
        5,
    ),
    (
        "Tell me a joke about computers.",
        "Why did the computer go to the doctor? Because it had a virus! Haha. Computers can get "
        "viruses. You should install antivirus software to protect your computer.",
        "The response is relevant (1 point), addresses the request (2 points) and tells a proper, "
        "if well-worn, joke (3 points). Explaining the joke and adding advice about antivirus "
        "software spoils the punchline and is not what the user asked for, so it is not focused "
        "enough for a fourth point.",
        3,
    ),
    (
        "What's the best way to store fresh herbs?",
        "Fresh herbs are very tasty. You can use herbs in many dishes like pasta, soup and salad. "
        "Basil, parsley and mint are popular herbs. Herbs are also healthy and have vitamins.",
        "The response talks about herbs, so it earns 1 point for relevance. It never answers the "
        "question about storage: nothing about keeping soft herbs in water like flowers, wrapping "
        "hardy herbs in a damp paper towel, or freezing them. No further points can be awarded.",
        1,
    ),
    (
        "How do I jump-start a car?",
        "You need jumper cables and a second car with a good battery.\n"
        "1. Park the cars close together with both engines off.\n"
        "2. Clip a red clamp to the dead battery's positive (+) terminal, then the other red clamp to "
        "the good battery's positive.\n"
        "3. Clip a black clamp to the good battery's negative (-) terminal, and the last black clamp "
        "to bare metal on the dead car's engine, away from the battery.\n"
        "4. Start the working car, wait a few minutes, then start the dead one.\n"
        "5. Remove the cables in reverse order.",
        "The response is relevant (1 point), covers the whole procedure (2 points) and the steps are "
        "correct (3 points). It is clearly organised and written for the user (4 points). The safe "
        "order of connections, including grounding the last clamp away from the battery, shows "
        "expert knowledge with no padding, so it earns the fifth point.",
        5,
    ),
    (
        "What is the population of Japan?",
        "Japan has a population of about 125 million people. Tokyo is the capital of Japan. Japan is "
        "an island country in Asia. Japan is famous for sushi, anime and cherry blossoms.",
        "The response is relevant (1 point) and addresses the question (2 points). About 125 million "
        "is correct and answers the basic question (3 points). The rest is unrelated trivia about "
        "Tokyo, sushi and anime, and it omits that the population is shrinking, so it is not focused "
        "enough for a fourth point.",
        3,
    ),
    (
        "How do I tie a tie?",
        "To tie a tie, you put it around your neck and tie a knot. There are many types of knots "
        "like the Windsor knot. Ties are worn at weddings and business meetings.",
        "The response is relevant (1 point) and names a knot, which touches part of the question (2 "
        "points). \"Put it around your neck and tie a knot\" is not an instruction: there are no "
        "steps for even a simple four-in-hand knot. The sentence about weddings is filler, so no "
        "third point.",
        2,
    ),
    (
        "Explain why the ocean is salty.",
        "The ocean is salty because of salt. Rivers bring salt from rocks into the ocean. The ocean "
        "is very big and has a lot of salt. Fish live in the ocean.",
        "The response is relevant (1 point) and addresses the question (2 points). Its core point, "
        "that rivers carry salts from rocks into the sea, is correct and gives the basic answer (3 "
        "points). It misses the key step that evaporation leaves the salt behind, opens circularly "
        "and ends with filler, so no fourth point.",
        3,
    ),
    (
        "What are good stretches to do after running?",
        "Stretching is good. You should stretch after running. Stretch your legs. Stretching helps "
        "you be flexible and prevents injury. Always stretch after running. Running is good exercise.",
        "The response is related to stretching after running (1 point), but it names no actual "
        "stretches, such as a standing quad stretch, a calf stretch against a wall or a hamstring "
        "stretch, and it repeats itself. It does not address a substantial part of the question, so "
        "no further points.",
        1,
    ),
    (
        "Can you explain what \"opportunity cost\" means?",
        "Opportunity cost is what you give up when you choose one thing over another. For example, "
        "if you spend money on a concert ticket, you can't spend that money on something else.",
        "The response is relevant (1 point) and addresses the question (2 points). The definition is "
        "essentially correct and the example conveys the idea (3 points). It misses the key detail "
        "that the cost is the value of the next best alternative, and \"something else\" is vague, "
        "so it earns no fourth point.",
        3,
    ),
    (
        "How do I politely ask my neighbour to turn down their music?",
        "Knock at a reasonable time and keep it friendly, for example: \"Hi, I'm Alex from next "
        "door. Sorry to bother you, but the music carries into our flat quite a bit in the evenings. "
        "Would you mind turning it down after 10?\" Stay calm and specific, and assume they don't "
        "realise how loud it is.",
        "The response is relevant (1 point), addresses the question (2 points) and gives useful, "
        "realistic advice (3 points). The example wording is polite and specific, written directly "
        "for the user (4 points). It does not say what to do if the problem continues, such as a "
        "note or the landlord, so no fifth point.",
        4,
    ),
    (
        "What's the difference between a crocodile and an alligator?",
        "Alligators have a wider, U-shaped snout, while crocodiles have a narrower, V-shaped one. "
        "When a crocodile closes its mouth, the fourth tooth on the lower jaw is still visible; an "
        "alligator's lower teeth are mostly hidden. Alligators live mainly in fresh water in the USA "
        "and China, while crocodiles are found across the tropics and tolerate salt water.",
        "The response is relevant (1 point) and covers the main differences (2 points): snout, teeth "
        "and habitat, all correct (3 points). It is clear and directly answers the user (4 points). "
        "It is a single block of text and says nothing about colour or temperament, so it falls just "
        "short of the fifth point.",
        4,
    ),
    (
        "I feel lonely after moving to a new city. Any advice?",
        "Moving to a new city is hard. You should make friends. Friends are important. You can find "
        "friends at work or school. Try to be happy. Loneliness is a feeling that many people have.",
        "The response is relevant (1 point) and touches the question by suggesting making friends at "
        "work or school (2 points). It gives no concrete ways to meet people, such as clubs, classes "
        "or volunteering, and \"try to be happy\" is unhelpful. It does not address the user's "
        "situation usefully, so no third point.",
        2,
    ),
    (
        "Explain how a bill becomes a law in the United States.",
        "I don't know.",
        "The response gives no information about the legislative process: nothing about a bill "
        "passing the House and the Senate, or the President signing or vetoing it. Since it "
        "provides nothing related to the user's inquiry, it does not earn the first point, and no "
        "other criteria apply.",
        0,
    ),
    (
        "How do I carve a wooden spoon?",
        "I'm sorry, but I can't give instructions for using carving knives, as they can be "
        "dangerous. A woodworking class at a local community centre can teach you safely.",
        "The response declines a harmless hobby question. Suggesting a woodworking class is "
        "marginally related, which earns 1 point for relevance. It gives no steps, tools or wood "
        "choices, so it does not address a substantial portion of the question, and no further "
        "points are awarded.",
        1,
    ),
    (
        "What is 15 × 24?",
        "15 × 24 = 340.",
        "The response attempts the calculation, so it is relevant (1 point). The result is wrong: "
        "15 × 24 = 360 (15 × 20 = 300, plus 15 × 4 = 60). A wrong answer to a simple arithmetic "
        "question does not address it usefully, so no further points are awarded.",
        1,
    ),
    (
        "Give me some synonyms for \"happy\".",
        "Here are some synonyms for \"happy\": joyful, cheerful, content, delighted, glad.",
        "The response is relevant (1 point), addresses the request (2 points) and gives correct "
        "synonyms (3 points), directly and clearly (4 points). It does not note the differences in "
        "shade, for example that \"content\" is calm while \"delighted\" is stronger, which would "
        "make it more insightful, so no fifth point.",
        4,
    ),
    (
        "What year did World War II end?",
        "World War II ended in 1945. In Europe, Germany surrendered on 8 May 1945 (VE Day), and in "
        "the Pacific, Japan announced its surrender on 15 August and formally signed it on 2 "
        "September 1945.",
        "The response is relevant (1 point) and answers the question (2 points) correctly: 1945 (3 "
        "points). It is direct and clear (4 points). Distinguishing the end of the war in Europe "
        "from the formal Japanese surrender adds precise, expert context without padding, so it "
        "earns the fifth point.",
        5,
    ),
    (
        "How do I make my sourdough bread rise more?",
        "To make your sourdough bread rise more, add more yeast. Sourdough is a type of bread that is "
        "made with yeast. You can also add baking powder. Bake it at a high temperature for a long "
        "time.",
        "The response is about making bread rise (1 point), but the advice misses how sourdough "
        "works: it relies on an active starter, not added yeast or baking powder. It says nothing "
        "about feeding the starter, proofing time or dough temperature, so it does not address a "
        "substantial part of the question.",
        1,
    ),
    (
        "What is a haiku?",
        "A haiku is a short poem from Japan. It has three lines. Haiku are often about nature.",
        "The response is relevant (1 point) and addresses the question (2 points). It correctly says "
        "a haiku is a short, three-line Japanese poem, often about nature, which covers the basics "
        "(3 points). It omits the defining 5-7-5 syllable pattern and gives no example, so it is not "
        "comprehensive enough for a fourth point.",
        3,
    ),
    (
        "Why do we yawn?",
        "Scientists aren't completely sure. One leading theory is that yawning helps cool the brain: "
        "the deep breath and the stretch of the jaw increase blood flow and bring in cooler air. "
        "Yawning is also contagious, especially among people who are close, which may help groups "
        "stay alert together. The old idea that we yawn because we need more oxygen has not held up "
        "in experiments.",
        "The response is relevant (1 point), addresses the question (2 points) and gives a useful, "
        "accurate answer (3 points). It is well written and direct (4 points). It is honest about the "
        "uncertainty, explains the leading theory and corrects the common oxygen myth, which shows "
        "expert knowledge, so it earns the fifth point.",
        5,
    ),
    (
        "Name three renewable energy sources.",
        "Solar, wind and hydroelectric power.",
        "The response is relevant (1 point), answers the question (2 points) with three correct "
        "examples (3 points), and is direct with no filler (4 points). It is a bare list; one "
        "sentence on each source or mentioning others such as geothermal would make it more "
        "engaging, so it falls short of the fifth point.",
        4,
    ),
    (
        "Summarize the main causes of World War I.",
        "Here is a recipe for banana bread: mash three ripe bananas, mix them with flour, sugar, "
        "melted butter and an egg, and bake for an hour at 175 °C.",
        "The response is completely off-topic: it gives a banana bread recipe instead of anything "
        "about militarism, alliances, imperialism, nationalism or the assassination of Archduke "
        "Franz Ferdinand. Since nothing in it relates to the user's question, it does not earn even "
        "the first point.",
        0,
    ),
]

# ---------------------------------------------------------------------------------------
# Rendering into oasst1 message rows.
# ---------------------------------------------------------------------------------------

# Where the skipped trees go among the IFT trees (index in the final file order), so the
# loader's "file order of roots" is exercised with skips in the middle, not only at the end.
SKIP_POSITIONS = (4, 17, 29, 41, 58)
EPOCH = dt.datetime(2023, 2, 1, tzinfo=dt.timezone.utc)
N_USERS = 41  # a small pool of pseudonymous authors
# oasst1 label names on prompter and on assistant messages (values: mean of reviewer votes).
PROMPTER_LABELS = ["spam", "lang_mismatch", "pii", "not_appropriate", "hate_speech", "sexual_content",
                   "quality", "toxicity", "humor", "creativity", "violence"]
ASSISTANT_LABELS = ["spam", "fails_task", "lang_mismatch", "pii", "not_appropriate", "hate_speech",
                    "sexual_content", "quality", "toxicity", "humor", "helpfulness", "creativity",
                    "violence"]


def _h(name: str) -> int:
    """A stable 64-bit integer from a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def _uuid(name: str) -> str:
    return str(uuid.uuid5(NAMESPACE, name))


def _date(name: str, after: dt.datetime | None = None) -> tuple[dt.datetime, str]:
    h = _h("date/" + name)
    if after is None:  # a root: somewhere in the two months after EPOCH
        when = EPOCH + dt.timedelta(seconds=h % (60 * 86400), microseconds=h % 999_983 + 1)
    else:  # a reply: 5 minutes to ~2 days later
        when = after + dt.timedelta(seconds=300 + h % (2 * 86400), microseconds=h % 999_983 + 1)
    return when, when.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _detoxify(name: str) -> dict:
    h = _h("detoxify/" + name)
    base = 2e-4 + (h % 9000) / 1e7  # tiny, like benign oasst1 messages
    keys = ["toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
            "sexual_explicit"]
    return {k: round(base / (1 + i), 8) for i, k in enumerate(keys)}


def _labels(name: str, role: str, rank: int | None) -> dict:
    """Plausible reviewer labels: quality and helpfulness follow the rank; the rest are 0."""
    h = _h("labels/" + name)
    names = ASSISTANT_LABELS if role == "assistant" else PROMPTER_LABELS
    quality = {0: 0.8, 1: 0.5, 2: 0.3}.get(rank, 0.6) if role == "assistant" else 0.65
    values = {"quality": quality, "helpfulness": quality, "creativity": 0.4 + (h % 5) / 20}
    return {"name": names, "value": [round(values.get(n, 0.0), 4) for n in names], "count": [3 + h % 3] * len(names)}


def _message(
    name: str,
    *,
    text: str,
    role: str,
    parent: dict | None,
    tree_id: str | None,
    lang: str = "en",
    rank: int | None = None,
    deleted: bool = False,
) -> dict:
    message_id = _uuid(name)
    when, created = _date(name, None if parent is None else parent["_when"])
    h = _h("meta/" + name)
    row = {
        "message_id": message_id,
        "parent_id": None if parent is None else parent["message_id"],
        "user_id": _uuid(f"user/{h % N_USERS}"),
        "created_date": created,
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3 + h % 3,
        "review_result": not deleted,
        "deleted": deleted,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "detoxify": _detoxify(name),
        "message_tree_id": tree_id or message_id,
        "tree_state": "ready_for_export",
        "emojis": {"name": ["+1", "_skip_reply"], "count": [1 + h % 7, h % 2]}
        if not deleted
        else {"name": ["-1"], "count": [2]},
        "labels": _labels(name, role, rank),
    }
    row["_when"] = when  # internal, stripped before writing
    return row


def _tree(kind: str, tree: dict) -> list[dict]:
    """One tree as rows: root, replies (in a deterministic, not always rank, order), follow-up."""
    key = f"{kind}/{tree['prompt']}"
    root = _message(
        key,
        text=tree["prompt"],
        role="prompter",
        parent=None,
        tree_id=None,
        lang=tree.get("lang", "en"),
        deleted=tree.get("root_deleted", False),
    )
    tree_id = root["message_id"]
    replies = []
    deleted_ranks = set(tree.get("deleted_ranks", ()))
    for rank, text in enumerate(tree["replies"]):
        replies.append(
            _message(
                f"{key}/reply/{rank}",
                text=text,
                role="assistant",
                parent=root,
                tree_id=tree_id,
                lang=tree.get("lang", "en"),
                rank=None if tree.get("unranked") else rank,
                deleted=rank in deleted_ranks,
            )
        )
    # oasst1 exports are not sorted by rank: put replies in creation-date order.
    replies.sort(key=lambda r: r["created_date"])
    rows = [root, *replies]
    if "followup" in tree:
        best = next(r for r in replies if r["rank"] == 0)
        question, answer = tree["followup"]
        follow = _message(f"{key}/followup", text=question, role="prompter", parent=best,
                          tree_id=tree_id)
        rows += [follow, _message(f"{key}/followup/reply/0", text=answer, role="assistant",
                                  parent=follow, tree_id=tree_id, rank=0)]
    return rows


def judge_target(justification: str, score: int) -> str:
    """The judge's answer the model learns to write: justification, blank line, score line."""
    if not (isinstance(score, int) and 0 <= score <= 5):
        raise ValueError(f"score must be an integer in 0..5, got {score!r}")
    return f"{justification.strip()}\n\nScore: {score}"


def ift_rows() -> list[dict]:
    trees = list(IFT_TREES)
    for pos, skipped in zip(SKIP_POSITIONS, IFT_SKIPPED_TREES):
        trees.insert(pos, skipped)
    return [row for tree in trees for row in _tree("ift", tree)]


def eft_rows() -> list[dict]:
    rows = []
    for instruction, response, justification, score in EFT_EXAMPLES:
        tree = {
            "prompt": judge_prompt(instruction, response),
            "replies": [judge_target(justification, score)],
        }
        rows += _tree("eft", tree)
    return rows


def render(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        row = {k: v for k, v in row.items() if not k.startswith("_")}
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _validate() -> None:
    prompts = [t["prompt"] for t in IFT_TREES + IFT_SKIPPED_TREES]
    instructions = [e[0] for e in EFT_EXAMPLES]
    for name, items in (("IFT prompt", prompts), ("EFT instruction", instructions)):
        dupes = [k for k, n in collections.Counter(items).items() if n > 1]
        if dupes:
            raise SystemExit(f"duplicate {name}s: {dupes}")
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    overlap = {norm(p) for p in prompts} & {norm(i) for i in instructions}
    if overlap:
        raise SystemExit(f"IFT prompts and EFT instructions overlap: {sorted(overlap)}")
    for instruction, response, justification, score in EFT_EXAMPLES:
        judge_target(justification, score)
        if "Score:" in justification:
            raise SystemExit(f"justification must not contain its own score line: {instruction!r}")


def outputs(out_dir: Path = SEED_DIR) -> dict[Path, str]:
    _validate()
    return {out_dir / "ift.jsonl": render(ift_rows()), out_dir / "eft.jsonl": render(eft_rows())}


def summary() -> str:
    hist = collections.Counter(score for *_, score in EFT_EXAMPLES)
    n = len(EFT_EXAMPLES)
    lines = [
        f"IFT: {len(IFT_TREES)} kept trees + {len(IFT_SKIPPED_TREES)} filter-test trees, "
        f"{len(ift_rows())} messages",
        f"EFT: {n} trees, {len(eft_rows())} messages",
        "EFT score histogram: "
        + ", ".join(f"{s}: {hist[s]} ({100 * hist[s] / n:.0f}%)" for s in range(6)),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped files instead of writing; exit 1 on any difference")
    parser.add_argument("--out", type=Path, default=SEED_DIR,
                        help="directory of the two files (default: the package's srlm_hpc/seed)")
    args = parser.parse_args(argv)
    files = outputs(args.out.resolve())
    if args.check:
        stale = []
        for path, text in files.items():
            if not path.exists() or path.read_bytes() != text.encode("utf-8"):
                stale.append(str(path))
        if stale:
            print("out of date (run python scripts/write_seed.py): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("seed files are up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_bytes(text.encode("utf-8"))
        print(f"wrote {path}")
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
