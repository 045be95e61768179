#!/usr/bin/env python3
"""Writes bench/data/cache_pairs.jsonl: the semantic cache's development pairs.

Each pair asks "may b be served a's answer?". Positives are paraphrases;
negatives are near misses that must not hit (negation, numbers, dates,
entities, quantifier scope, direction, different intent). Hand-written, English
and Russian. Tune on these; the lead evaluates on a held-out set.
Run: python3 bench/data/make_cache_pairs.py > bench/data/cache_pairs.jsonl
"""
import json

POS_EN = """What is the capital of France? | Tell me the capital of France.
How do I reverse a list in Python? | How can I reverse a Python list?
What's the boiling point of water at sea level? | At sea level, what temperature does water boil at?
How do I make a cup of green tea? | What is the way to brew green tea?
Who wrote Pride and Prejudice? | Who is the author of Pride and Prejudice?
How many legs does a spider have? | How many legs do spiders have?
What is photosynthesis? | Explain photosynthesis.
How do I center a div in CSS? | How can I center a div using CSS?
What is the difference between TCP and UDP? | Explain the difference between TCP and UDP.
Translate good morning into Spanish | How do you say good morning in Spanish?
How do I install Rust on Linux? | What is the way to install Rust on Linux?
What causes rain? | Why does it rain?
Give me a recipe for pancakes | How do I make pancakes?
What is the speed of light? | How fast does light travel?
How do I undo the last git commit? | How can I undo my last commit in git?
What does HTTP stand for? | What is HTTP short for?
Who painted the Mona Lisa? | Who was the painter of the Mona Lisa?
How do I sort a dictionary by value in Python? | Sort a Python dictionary by its values
What is a black hole? | Can you explain what a black hole is?
How can I improve my sleep? | What are ways to sleep better?
What is the population of Tokyo? | How many people live in Tokyo?
How do I convert a string to an integer in Java? | Convert a string to an int in Java
What are the symptoms of the flu? | What symptoms does the flu cause?
What is the tallest mountain in the world? | Which mountain is the tallest in the world?
How do I delete a file in Linux? | How can I remove a file on Linux?
What is machine learning? | Explain what machine learning is.
Why is the sky blue? | What makes the sky blue?
How do I create a virtual environment in Python? | How to make a Python virtual environment
What is the chemical formula of water? | What's water's chemical formula?
How do vaccines work? | Explain how vaccines work.
What is the meaning of the word ephemeral? | What does ephemeral mean?
How do I read a CSV file with pandas? | Read a CSV file using pandas
Where is the Eiffel Tower? | Where is the Eiffel Tower located?
What is the largest ocean on Earth? | Which ocean is the largest on Earth?
How do I change my password on Gmail? | How can I change my Gmail password?
Summarize the plot of Hamlet | Give me a summary of the plot of Hamlet
What is inflation in economics? | Explain inflation in economics.
How do I compute the factorial of a number in Python? | Write Python code to compute the factorial of a number
What language is spoken in Brazil? | Which language do people speak in Brazil?
How long should I boil an egg? | For how long should an egg be boiled?
What is the capital of Japan? | Name the capital of Japan.
How do I check my Python version? | How can I see which Python version I have?
What is DNA? | Explain what DNA is.
How does a refrigerator work? | Explain how a refrigerator works.
How do I merge two dictionaries in Python? | Merge two Python dictionaries
What is the freezing point of water in Fahrenheit? | In Fahrenheit, what is the freezing point of water?
Who discovered penicillin? | Who was the discoverer of penicillin?
What are prime numbers? | Explain what prime numbers are.
How do I make my website load faster? | How can I speed up my website?
What is the currency of the United Kingdom? | Which currency does the United Kingdom use?
How do I list running processes in Linux? | Show running processes on Linux
What is a REST API? | Explain what a REST API is.
How do I write a for loop in JavaScript? | Write a for loop in JavaScript
What is the main function of the heart? | What does the heart mainly do?
How can I learn to play guitar? | What is the best way to learn guitar?
What is gravity? | Explain gravity to me.
How do I fix a flat bicycle tire? | How can I repair a flat tire on my bike?
What is the smallest country in the world? | Which country is the smallest in the world?
What does a CPU do? | What is the job of a CPU?
How do I stop procrastinating? | How can I stop procrastinating?
What is an API key? | Explain what an API key is
Recommend a good book about history | Can you recommend a good history book?
How do I open a port in the firewall on Ubuntu? | Open a firewall port on Ubuntu
What is the function of the liver? | What does the liver do?
How do I cook rice? | What's the way to cook rice?
what is kubernetes | What is Kubernetes?
how to exit vim | How do I exit Vim?
Explain recursion | What is recursion?
Is coffee bad for you? | Is drinking coffee bad for you?
What is the capital of Canada? | capital of Canada?""".split("\n")

POS_RU = """Какая столица Франции? | Назови столицу Франции.
Как перевернуть список в Python? | Как развернуть список в Python?
Что такое фотосинтез? | Объясни, что такое фотосинтез.
Кто написал «Войну и мир»? | Кто автор романа «Война и мир»?
Как сварить гречку? | Как приготовить гречку?
Почему небо голубое? | Отчего небо голубого цвета?
Как удалить файл в Linux? | Как удалить файл в линуксе?
Что такое машинное обучение? | Объясни, что такое машинное обучение.
Сколько ног у паука? | Сколько ног у пауков?
Как установить Python на Windows? | Как поставить Python на Windows?
Какая самая высокая гора в мире? | Какая гора самая высокая в мире?
Что такое инфляция? | Объясни, что такое инфляция.
Как работает холодильник? | Объясни, как работает холодильник.
Какой язык официальный в Бразилии? | На каком языке говорят в Бразилии?
Как улучшить сон? | Как лучше спать?
Что такое черная дыра? | Расскажи, что такое черная дыра.
Как отменить последний коммит в git? | Как откатить последний коммит в git?
Где находится Эйфелева башня? | Где расположена Эйфелева башня?
Что такое ДНК? | Объясни, что такое ДНК.
Как научиться играть на гитаре? | Как выучиться игре на гитаре?
Кто нарисовал Мону Лизу? | Кто автор картины Мона Лиза?
Что такое REST API? | Объясни, что такое REST API.
Как сделать сайт быстрее? | Как ускорить сайт?
Какая валюта в Японии? | Какая валюта используется в Японии?
Что делает печень? | Какая функция у печени?""".split("\n")

NEG = {
 "negation": """Is coffee good for your health? | Is coffee not good for your health?
Why does my code compile? | Why doesn't my code compile?
Can dogs eat chocolate? | Can't dogs eat chocolate?
Is it safe to drink tap water in Paris? | Is it unsafe to drink tap water in Paris? | x
Should I use a mutex here? | Should I not use a mutex here?
Does the function return a value? | Does the function never return a value?
Which fruits contain vitamin C? | Which fruits contain no vitamin C?
List countries that use the euro | List countries that do not use the euro
Foods to eat with diabetes | Foods not to eat with diabetes
Is Pluto a planet? | Is Pluto not a planet?
Why is my server responding? | Why is my server not responding?
How to write tests with mocks | How to write tests without mocks
Is the Great Wall visible from space? | Is the Great Wall not visible from space?
Can I take ibuprofen with alcohol? | Can I never take ibuprofen with alcohol?
Это правда? | Это не правда?
Можно ли пить воду из-под крана в Москве? | Нельзя ли пить воду из-под крана в Москве?
Какие продукты содержат глютен? | Какие продукты не содержат глютен?
Почему сервер отвечает? | Почему сервер не отвечает?""",
 "numbers": """Convert 5 miles to kilometers | Convert 50 miles to kilometers
What is 12 times 13? | What is 12 times 14?
Give me 3 tips for studying | Give me 5 tips for studying
How much is 100 dollars in euros? | How much is 1000 dollars in euros?
What are two uses of copper? | What are three uses of copper?
Write a poem of 4 lines | Write a poem of 8 lines
Is 17 a prime number? | Is 21 a prime number?
How many calories are in 2 eggs? | How many calories are in 6 eggs?
Sort the list [3, 1, 2] | Sort the list [3, 1, 4]
What is the square root of 144? | What is the square root of 169?
Set a timer for 10 minutes | Set a timer for 15 minutes
Write a 500 word essay about climate | Write a 200 word essay about climate
How long to cook a 5 kg turkey? | How long to cook a 7 kg turkey?
What is 15 percent of 80? | What is 20 percent of 80?
Переведи 10 долларов в рубли | Переведи 100 долларов в рубли
Сколько будет 7 умножить на 8? | Сколько будет 7 умножить на 9?
Дай три совета по учебе | Дай пять советов по учебе""",
 "dates": """What happened in 1917 in Russia? | What happened in 1918 in Russia?
Events in March 2020 | Events in April 2020
What's the weather in London today? | What's the weather in London tomorrow?
Who won the World Cup in 2014? | Who won the World Cup in 2018?
What day of the week is it on Monday plus two days? | What day of the week is it on Friday plus two days?
Schedule a meeting on Tuesday | Schedule a meeting on Thursday
Who was president of the US in 1990? | Who was president of the US in 2000?
Stock market news from yesterday | Stock market news from today
Best places to visit in Italy in summer | Best places to visit in Italy in winter
Погода в Москве завтра | Погода в Москве сегодня
Что произошло в 1991 году? | Что произошло в 1993 году?
Назначь встречу на понедельник | Назначь встречу на пятницу
Какие праздники в мае? | Какие праздники в январе?""",
 "entities": """Who founded Apple? | Who founded Microsoft?
What is the capital of Austria? | What is the capital of Australia?
Flights from Paris to London | Flights from London to Paris
Convert USD to EUR | Convert EUR to USD
How tall is Barack Obama? | How tall is Michelle Obama?
What is the population of Germany? | What is the population of France?
Compare Python with Go | Compare Python with Rust
Who wrote Hamlet? | Who wrote Macbeth?
How do I install Docker on Ubuntu? | How do I install Docker on Fedora?
What is the GDP of Brazil? | What is the GDP of Argentina?
Directions from Berlin to Munich | Directions from Munich to Berlin
How old is Elon Musk? | How old is Jeff Bezos?
Tell me about the Amazon river | Tell me about the Nile river
What is the time zone of Tokyo? | What is the time zone of Seoul?
Is Tesla stock a good buy? | Is Nvidia stock a good buy?
Who is the CEO of Google? | Who is the CEO of Amazon?
Explain the history of Rome | Explain the history of Athens
Кто основал Яндекс? | Кто основал Сбер?
Какая столица Австрии? | Какая столица Австралии?
Билеты из Москвы в Казань | Билеты из Казани в Москву
Сколько лет Пушкину было в 1820? | Сколько лет Лермонтову было в 1820?
Расскажи про Байкал | Расскажи про Ладогу""",
 "quantifiers": """Are all birds able to fly? | Are some birds able to fly?
List at least three fruits | List three fruits
Do all mammals lay eggs? | Do any mammals lay eggs?
Is every prime number odd? | Is some prime number odd?
Which planets have rings? | Which planets only have rings?
Do most people like chocolate? | Do few people like chocolate?
Does each student need a laptop? | Does any student need a laptop?
Are all swans white? | Are most swans white?
Give me some examples of verbs | Give me many examples of verbs
Do cats always land on their feet? | Do cats sometimes land on their feet?
Все ли птицы летают? | Некоторые птицы летают?
Каждый ли студент должен сдать экзамен? | Любой студент должен сдать экзамен?""",
 "direction": """Which is the largest planet? | Which is the smallest planet?
What is the highest mountain in Africa? | What is the lowest point in Africa?
Is it cheaper to fly or take the train? | Is it faster to fly or take the train?
How to increase my credit score | How to decrease my credit score
What happened before the French Revolution? | What happened after the French Revolution?
Which is the fastest land animal? | Which is the slowest land animal?
What was the first programming language? | What was the last programming language?
Temperatures above freezing | Temperatures below freezing
Какая самая большая планета? | Какая самая маленькая планета?
Что было до революции? | Что было после революции?""",
 "intent": """How do I install Rust? | How do I uninstall Rust?
How do I create a git branch? | How do I delete a git branch?
Write a poem about the sea | Write a story about the sea
Translate hello into French | Translate hello into German
Summarize this article about cats | Criticize this article about cats
How do I encrypt a file? | How do I decrypt a file?
Benefits of running every day | Risks of running every day
How do I start a business? | How do I close a business?
Recipe for chocolate cake | Calories in chocolate cake
How do I download a video from the site? | How do I upload a video to the site?
What is the capital of France? | What is the population of France?
Как установить Docker? | Как удалить Docker?
Напиши стихотворение о море | Напиши рассказ о море
Переведи привет на французский | Переведи привет на немецкий""",
 # Added for issue 11 (opposites, swapped roles, units, scope): development
 # pairs to tune the verifier on; the held-out set is make_cache_pairs_test.py.
 "opposites": """Is smoking permitted in the hotel? | Is smoking prohibited in the hotel?
Why did the shares go up today? | Why did the shares go down today?
How do I enable two-factor login? | How do I disable two-factor login?
What are the benefits of a standing desk? | What are the drawbacks of a standing desk?
How do I make bread softer? | How do I make bread harder?
When does the flight land in Rome? | When does the flight take off from Rome?
Можно ли пить кофе при давлении? | Нельзя ли пить кофе при давлении?
Почему доллар дорожает? | Почему доллар дешевеет?
Как включить субтитры на ютубе? | Как выключить субтитры на ютубе?
Чем полезен сахар? | Чем вреден сахар?
Почему акции растут? | Почему акции падают?
Как ускорить компьютер? | Как замедлить компьютер?""",
 "roles": """Did Rome conquer Carthage? | Did Carthage conquer Rome?
Why does the dog chase the ball? | Why does the ball chase the dog?
How do I convert an array to a set in Java? | How do I convert a set to an array in Java?
How do I move money from savings to checking? | How do I move money from checking to savings?""",
 "units": """How many cups are in a liter? | How many cups are in a quart?
What is 30 degrees Celsius in Fahrenheit? | What is 30 degrees Fahrenheit in Celsius?
How much does a cup of honey weigh in grams? | How much does a cup of honey weigh in ounces?""",
 "scope": """What is a normal blood pressure for a teenager? | What is a normal blood pressure for an elderly person?
How much should a baby eat per feeding? | How much should a toddler eat per feeding?
What is the best diet for a vegetarian? | What is the best diet for a bodybuilder?
Which tent is best for winter camping? | Which tent is best for desert camping?
How do I register a car as a resident? | How do I register a car as a tourist?""",
}

def out(a, b, hit, kind, lang):
    print(json.dumps({"a": a.strip(), "b": b.strip(), "hit": hit, "kind": kind, "lang": lang}, ensure_ascii=False))

for line in POS_EN:
    a, b = line.split(" | ")[:2]
    out(a, b, True, "paraphrase", "en")
for line in POS_RU:
    a, b = line.split(" | ")[:2]
    out(a, b, True, "paraphrase", "ru")
for kind, text in NEG.items():
    for line in text.split("\n"):
        a, b = line.split(" | ")[:2]
        lang = "ru" if any("\u0400" <= c <= "\u04ff" for c in a) else "en"
        out(a, b, False, kind, lang)
