#!/usr/bin/env python3
"""Writes bench/data/cache_pairs_test.jsonl: the semantic cache's HELD-OUT pairs.

A test set, kept apart from the development pairs (make_cache_pairs.py): it
was written before the verifier was changed for issue 11 and is never used to
tune it. Figures on it go to bench/RESULTS.md as they come out.

Each pair asks "may b be served a's answer?". Positives are true paraphrases;
negatives differ by an antonym, a swapped role or direction, a unit or
quantity, or a scope ("for a child" / "for an adult"). Hand-written, mostly
English, a few Russian; no sentence is taken from the development set.
Run: python3 bench/data/make_cache_pairs_test.py > bench/data/cache_pairs_test.jsonl
"""
import json

POS = """How long should I boil an egg for a soft yolk? | For a runny yolk, how long do I boil an egg?
What is the best way to learn to touch type? | How can I learn touch typing effectively?
Why do cats purr? | What makes cats purr?
How do I check my disk usage on Ubuntu? | How can I see how much disk space is used on Ubuntu?
What is the meaning of the word ubiquitous? | What does ubiquitous mean?
How do I get rid of hiccups? | What's a way to stop hiccups?
Who discovered radium? | Who was the discoverer of radium?
How does a refrigerator keep food cold? | How do fridges keep food cold?
What is the difference between a virus and a bacterium? | How do viruses differ from bacteria?
How do I list all running processes in Linux? | How can I see every running process on Linux?
Explain how compound interest works | How does compound interest work?
What foods are high in iron? | Which foods contain a lot of iron?
How do I clean a cast iron pan? | What is the right way to clean a cast iron skillet?
What is the largest desert in Asia? | Which desert in Asia is the biggest?
How do I rename a branch in git? | How can I rename a git branch?
What are the main causes of inflation? | What causes inflation?
How do I write a cover letter? | How should I write a cover letter?
Why do leaves change color in autumn? | Why do leaves turn different colors in the fall?
What is the plot of Hamlet? | Summarize the plot of Hamlet.
How many bones are in the human body? | How many bones does a human body have?
How do I remove a stain from a white shirt? | How can I get a stain out of a white shirt?
What is a good name for a golden retriever puppy? | Suggest a name for a golden retriever puppy.
How does GPS determine location? | How does GPS figure out where you are?
What is the capital of Kenya? | Which city is the capital of Kenya?
How do I make cold brew coffee at home? | How can I make cold brew coffee at home?
What does a project manager do? | What are the responsibilities of a project manager?
How do I take a screenshot on a Mac? | How can I take a screenshot on macOS?
What is the Pythagorean theorem? | Explain the Pythagorean theorem.
How do noise cancelling headphones work? | How does noise cancelling in headphones work?
What is the distance from the Earth to the Moon? | How far away is the Moon from the Earth?
How do I fix a leaking tap? | How can I repair a dripping faucet?
What is the difference between weather and climate? | How is weather different from climate?
How do I calculate the area of a circle? | What is the formula for the area of a circle?
Why do we dream? | What is the reason we dream?
How do I set up SSH keys on GitHub? | How can I add an SSH key to GitHub?
What is the function of the pancreas? | What does the pancreas do?
How can I save money on groceries? | What are ways to spend less on groceries?
Who invented the telephone? | Who was the inventor of the telephone?
How do I convert a PDF to a Word document? | How can I turn a PDF into a Word document?
What is the best time to plant tomatoes? | When should I plant tomatoes?
How do I remove duplicates from a list in Python? | How can I deduplicate a Python list?
What does DNA stand for? | What is DNA short for?
How do I unclog a kitchen sink? | How can I clear a clogged kitchen sink?
What is the theory of relativity? | Explain the theory of relativity.
How do I start running as a beginner? | How should a beginner get into running?
What is the longest river in Africa? | Which river in Africa is the longest?
How does a bill become a law in the United States? | How is a bill turned into law in the United States?
What are the health benefits of green tea? | How is green tea good for your health?
How do I flatten a nested list in Python? | How can I flatten a list of lists in Python?
What is the speed of sound in air? | How fast does sound travel in air?
How do I write a for loop in Bash? | How can I write a Bash for loop?
What is the origin of Halloween? | Where does Halloween come from?
How do airplanes stay in the air? | What keeps an airplane in the air?
What is the smallest bone in the human body? | Which bone in the human body is the smallest?
How do I calm down before an exam? | How can I stay calm before a test?
What is an API? | Explain what an API is.
How do I grow basil indoors? | How can I grow basil inside my home?
What is the main ingredient in guacamole? | What is guacamole mainly made of?
How do I change a flat tire? | How can I change a flat tyre?
What causes earthquakes? | Why do earthquakes happen?
How do I reset my router? | How can I reset a router?
What languages are spoken in Switzerland? | Which languages do people speak in Switzerland?
How do I find the median of a list of numbers? | How is the median of a list of numbers found?
What is the role of mitochondria in a cell? | What do mitochondria do in a cell?
How do I write a haiku? | How can I compose a haiku?
What are the rules of chess? | Explain the rules of chess.
How do I brew beer at home? | How can I make beer at home?
What is quantum computing? | Can you explain quantum computing?
How do I teach my dog to sit? | How can I train my dog to sit?
What is the melting point of lead? | At what temperature does lead melt?
How do I count words in a file on Linux? | How can I count the words in a file on Linux?
What is a mortgage? | Explain what a mortgage is.
How do I prevent my phone battery from draining quickly? | How can I stop my phone battery draining so fast?
Who was the first person to walk on the Moon? | Who first walked on the Moon?
How do I make a paper airplane? | How can I fold a paper airplane?
What is the difference between a crocodile and an alligator? | How do alligators differ from crocodiles?
How do I check which version of Python is installed? | How can I see my installed Python version?
What does a red sky at night mean? | What does it mean when the sky is red at night?
How do I calculate my body mass index? | How is body mass index calculated?
What is the boiling point of olive oil? | At what temperature does olive oil boil?
How do I join a table with itself in SQL? | How do I write a self join in SQL?
What are the symptoms of dehydration? | What are signs of dehydration?
How do I politely decline a meeting? | What is a polite way to decline a meeting?
What is the tallest building in the world? | Which building is the tallest in the world?
How do I make a sourdough starter? | How can I create a sourdough starter?
Why is the ocean salty? | What makes the ocean salty?
How do I read a CSV file in pandas? | How can I load a CSV file with pandas?
What is the difference between affect and effect? | How is affect different from effect?
How do I back up my iPhone? | How can I make a backup of my iPhone?
What does a pH of 7 mean? | What does it mean if the pH is 7?
How do I tie a tie? | How can I tie a necktie?
What is the greenhouse effect? | Explain the greenhouse effect.
How do I get a passport in the United Kingdom? | How can I apply for a passport in the United Kingdom?
What is the most spoken language in the world? | Which language has the most speakers in the world?
How do I stop my glasses from fogging up? | How can I keep my glasses from fogging?
What is the purpose of a firewall? | What does a firewall do?
How do I make my code run faster in Python? | How can I speed up my Python code?
What is the history of the Eiffel Tower? | Tell me the history of the Eiffel Tower.
How do I fall asleep quickly? | How can I fall asleep fast?
What is the difference between a list and a tuple in Python? | How does a Python list differ from a tuple?
How do I write a resignation letter? | How should I write a letter of resignation?
What are black holes made of? | What is a black hole made of?
How do I check the weather forecast on the command line? | How can I see the weather forecast from the terminal?
What is inflation? | Explain what inflation is.
How can I learn Japanese quickly? | What is the fastest way to learn Japanese?
What is the atomic number of carbon? | What is carbon's atomic number?
How do I kill a process by name in Linux? | How can I kill a Linux process using its name?
What are the benefits of meditation? | Why is meditation good for you?
How do I find my IP address on Windows? | How can I see my IP address in Windows?
Who built the pyramids of Giza? | Who constructed the Giza pyramids?
How do I cook rice in a pot? | How can I cook rice on the stove in a pot?
What does a load balancer do? | What is the job of a load balancer?
How do I write a unit test in Rust? | How can I write unit tests in Rust?
What is the capital of Morocco? | Which city is Morocco's capital?
How do I ask for a raise? | What's the best way to ask my boss for a raise?
What is the difference between baking soda and baking powder? | How does baking soda differ from baking powder?
How do I get better at public speaking? | How can I improve my public speaking?
How do solar panels generate electricity? | How do solar panels make electricity?
What is the plural of cactus? | What's the plural form of cactus?
How do I use a semicolon correctly? | When should I use a semicolon?
What is the half-life of carbon-14? | How long is the half-life of carbon-14?
How do I make a budget spreadsheet? | How can I create a budget in a spreadsheet?
Why do onions make you cry? | What makes us cry when cutting onions?
How do I add a user on Linux? | How can I create a new user account in Linux?
What is the meaning of life according to Aristotle? | What did Aristotle think the meaning of life was?
How do I pick a ripe avocado? | How can I tell if an avocado is ripe?
What is a recession? | Explain what a recession is.
How do I convert Celsius to Fahrenheit? | What is the formula to convert Celsius into Fahrenheit?
How do I clean my laptop keyboard? | How can I clean a laptop keyboard?
What did the Industrial Revolution change? | How did the Industrial Revolution change society?
How do I write a regular expression for an email address? | What regex matches an email address?
What are the side effects of caffeine? | What side effects does caffeine have?
How do I get my baby to sleep through the night? | How can I help my baby sleep through the night?
What is the difference between RAM and storage? | How does RAM differ from storage?
How do I polish silver? | How can I clean tarnished silver?
What is the best way to store fresh herbs? | How should I store fresh herbs?
Why do we have leap years? | What is the reason for leap years?
How do I undo changes to a file in git? | How can I discard my changes to a file in git?
What is the capital of Brazil? | Name the capital of Brazil.
How does the stock market work? | Explain how the stock market works.
How do I make scrambled eggs fluffy? | How can I make fluffy scrambled eggs?
What is the difference between a hurricane and a typhoon? | How is a hurricane different from a typhoon?
How do I improve my credit score? | How can I raise my credit score?
What causes migraines? | What triggers migraine headaches?
How do I format a date in JavaScript? | How can I format dates in JavaScript?
What is the function of red blood cells? | What do red blood cells do?
How do I stop biting my nails? | How can I quit biting my nails?
What is the deepest point in the ocean? | Where is the deepest part of the ocean?
How do I set a static IP address on Ubuntu? | How can I configure a static IP on Ubuntu?
What is an index fund? | Explain what an index fund is.
How do I keep cut flowers fresh longer? | How can I make cut flowers last longer?
Who composed the Four Seasons? | Who is the composer of the Four Seasons?
How do I make a website responsive? | How can I make my website responsive?
What are the phases of the Moon? | What phases does the Moon go through?
How do I iron a shirt without an iron? | How can I iron a shirt if I don't have an iron?
How do I whiten my teeth at home? | How can I whiten teeth at home?
What is the difference between empathy and sympathy? | How is empathy different from sympathy?
How do I cancel my Netflix subscription? | How can I cancel a Netflix subscription?
What is a prime number? | Explain what a prime number is.
How do I sharpen a kitchen knife? | How can I sharpen my kitchen knife?
Как приготовить борщ? | Как сварить борщ?
Почему кошки мурлычут? | Отчего кошки мурлычут?
Как быстро выучить английский язык? | Как выучить английский быстро?
Кто написал роман «Мастер и Маргарита»? | Кто автор романа «Мастер и Маргарита»?
Что такое ипотека? | Объясни, что такое ипотека.
Как снизить давление без таблеток? | Как понизить давление без лекарств?
Сколько костей в теле человека? | Сколько костей у человека?
Как ухаживать за орхидеей? | Как правильно ухаживать за орхидеями?
Как сделать скриншот на ноутбуке? | Как сделать снимок экрана на ноутбуке?
Чем полезен зелёный чай? | В чём польза зелёного чая?"""

NEG = {
"antonym": """Is it allowed to bring a laptop on a plane? | Is it forbidden to bring a laptop on a plane?
Why do interest rates increase during inflation? | Why do interest rates decrease during inflation?
What time does the train arrive in Lyon? | What time does the train depart from Lyon?
Should I buy stocks when the market is falling? | Should I sell stocks when the market is falling?
What goods does Japan import? | What goods does Japan export?
How do I include hidden files in the search results? | How do I exclude hidden files from the search results?
What are the advantages of remote work? | What are the disadvantages of remote work?
What are the benefits of intermittent fasting? | What are the risks of intermittent fasting?
What makes a soil acidic? | What makes a soil alkaline?
How do I make my hair straight? | How do I make my hair curly?
Is coffee good for the heart? | Is coffee bad for the heart?
What foods raise blood pressure? | What foods lower blood pressure?
How do I gain weight healthily? | How do I lose weight healthily?
Why do prices rise in summer? | Why do prices fall in summer?
How do I widen a column in Excel? | How do I narrow a column in Excel?
How can I make my tea stronger? | How can I make my tea weaker?
Is it safe to swim after eating? | Is it dangerous to swim after eating?
How do I turn on dark mode in Chrome? | How do I turn off dark mode in Chrome?
What are the symptoms of high blood sugar? | What are the symptoms of low blood sugar?
Why is my car engine running hot? | Why is my car engine running cold?
How do I accept a meeting invite in Outlook? | How do I reject a meeting invite in Outlook?
How do I push changes to a remote repository? | How do I pull changes from a remote repository?
How do I expand all folders in VS Code? | How do I collapse all folders in VS Code?
What were the strengths of the Roman army? | What were the weaknesses of the Roman army?
Why are some people left-handed? | Why are some people right-handed?
How do I tighten a bike chain? | How do I loosen a bike chain?
How do I raise the volume on my TV? | How do I lower the volume on my TV?
How do I hide the taskbar in Windows? | How do I show the taskbar in Windows?
Which team won the 2018 World Cup final? | Which team lost the 2018 World Cup final?
What is the hottest planet in the solar system? | What is the coldest planet in the solar system?
What is the heaviest bird? | What is the lightest bird?
What is the wettest place on Earth? | What is the driest place on Earth?
What are the pros of nuclear energy? | What are the cons of nuclear energy?
Why does my dog sleep so much? | Why does my dog sleep so little?
Why is my internet connection so slow? | Why is my internet connection so fast?
What makes a good leader? | What makes a bad leader?
What are signs of a healthy relationship? | What are signs of a toxic relationship?
When do the clocks go forward in the UK? | When do the clocks go back in the UK?
How do I deposit money into my PayPal account? | How do I withdraw money from my PayPal account?
How do I add a printer in Windows 11? | How do I remove a printer in Windows 11?
Why do my hands feel hot at night? | Why do my hands feel cold at night?
Which foods are acidic? | Which foods are alkaline?
Is sugar soluble in oil? | Is sugar insoluble in oil?
What should I do if my blood pressure is too high? | What should I do if my blood pressure is too low?
How do I make my sauce thicker? | How do I make my sauce thinner?
Why did the Roman Empire rise? | Why did the Roman Empire fall?
How can I speed up my metabolism? | How can I slow down my metabolism?
How do I freeze fresh bread? | How do I thaw frozen bread?
How do I connect my headphones via Bluetooth? | How do I disconnect my headphones from Bluetooth?
What happens when you inhale smoke? | What happens when you exhale smoke?
What is the easiest language for English speakers to learn? | What is the hardest language for English speakers to learn?
Who is the youngest player in the NBA? | Who is the oldest player in the NBA?
Is the Amazon rainforest shrinking? | Is the Amazon rainforest growing?
When does the sun rise in Oslo in June? | When does the sun set in Oslo in June?
What time does the store open on Sundays? | What time does the store close on Sundays?
Is the number 91 prime? | Is the number 91 composite?
Is a tomato a fruit? | Is a tomato a vegetable?
Is it legal to record a phone call in California? | Is it illegal to record a phone call in California?
How do I increase the font size in Word? | How do I decrease the font size in Word?
Why is my cat losing weight? | Why is my cat gaining weight?
What causes a fever to go up at night? | What causes a fever to go down at night?
Можно ли провозить ноутбук в самолёте? | Запрещено ли провозить ноутбук в самолёте?
Почему цены растут летом? | Почему цены падают летом?
Что Россия импортирует из Китая? | Что Россия экспортирует в Китай?
Как купить акции через приложение? | Как продать акции через приложение?
Когда поезд прибывает в Казань? | Когда поезд отправляется из Казани?
Как набрать вес? | Как сбросить вес?""",
"roles": """Did Apple sue Samsung over patents? | Did Samsung sue Apple over patents?
Why did Brutus betray Caesar? | Why did Caesar betray Brutus?
How much does Google pay Apple to be the default search engine? | How much does Apple pay Google to be the default search engine?
Why did Microsoft acquire LinkedIn? | Why did LinkedIn acquire Microsoft?
Can a cat eat dog food? | Can a dog eat cat food?
How do I convert a string to a list in Python? | How do I convert a list to a string in Python?
How do I convert JSON to YAML? | How do I convert YAML to JSON?
How good is machine translation from Korean to English? | How good is machine translation from English to Korean?
How do I copy files from my phone to my laptop? | How do I copy files from my laptop to my phone?
What's the flight time from Tokyo to Sydney? | What's the flight time from Sydney to Tokyo?
How do I get from the airport to the city centre in Lisbon? | How do I get from the city centre to the airport in Lisbon?
How do I migrate from MySQL to PostgreSQL? | How do I migrate from PostgreSQL to MySQL?
How do I switch from Android to iPhone? | How do I switch from iPhone to Android?
Does the landlord have to pay the tenant for repairs? | Does the tenant have to pay the landlord for repairs?
What did Einstein say about Bohr? | What did Bohr say about Einstein?
Why did Germany declare war on the United States? | Why did the United States declare war on Germany?
How do I send money from PayPal to my bank? | How do I send money from my bank to PayPal?
Was Plato a student of Socrates? | Was Socrates a student of Plato?
How do I transfer contacts from Outlook to Gmail? | How do I transfer contacts from Gmail to Outlook?
Can a patient sue a doctor for misdiagnosis? | Can a doctor sue a patient for misdiagnosis?
Can an employee sue an employer for unpaid overtime? | Can an employer sue an employee for unpaid overtime?
How do I redirect HTTP to HTTPS in nginx? | How do I redirect HTTPS to HTTP in nginx?
What is the exchange rate from euros to dollars? | What is the exchange rate from dollars to euros?
How do I cast an int to a float in C? | How do I cast a float to an int in C?
Did the Greeks defeat the Persians at Marathon? | Did the Persians defeat the Greeks at Marathon?
Why does the cat chase the mouse? | Why does the mouse chase the cat?
What gifts does the groom give the bride? | What gifts does the bride give the groom?
Can a husband inherit from his wife without a will? | Can a wife inherit from her husband without a will?
How do I move photos from Google Photos to iCloud? | How do I move photos from iCloud to Google Photos?
Does the teacher evaluate the student or the other way around in this course? | Does the student evaluate the teacher or the other way around in this course?
Как перевести деньги с карты на счёт? | Как перевести деньги со счёта на карту?
Как доехать из аэропорта до центра Москвы? | Как доехать из центра Москвы до аэропорта?""",
"direction": """How do I scroll up in tmux? | How do I scroll down in tmux?
Why do birds fly south for the winter? | Why do birds fly north for the winter?
How do I move a window to the left monitor? | How do I move a window to the right monitor?
Should I turn the valve clockwise to open it? | Should I turn the valve counterclockwise to open it?
How do I sort a list in ascending order in Python? | How do I sort a list in descending order in Python?
How do I upgrade my npm package? | How do I downgrade my npm package?
How do I round a number up in Excel? | How do I round a number down in Excel?
What are inbound rules in a firewall? | What are outbound rules in a firewall?
Is cycling uphill good exercise? | Is cycling downhill good exercise?
What happens to blood flow when you stand up? | What happens to blood flow when you lie down?
How do I zoom in on a Mac? | How do I zoom out on a Mac?
How do I scale up a Kubernetes deployment? | How do I scale down a Kubernetes deployment?
How do I shift cells to the right in Excel? | How do I shift cells to the left in Excel?
Why does water drain counterclockwise in the southern hemisphere? | Why does water drain clockwise in the southern hemisphere?
How do I sign in to my Microsoft account? | How do I sign out of my Microsoft account?
What time is check-in at most hotels? | What time is check-out at most hotels?
How do I indent a block of code in Vim? | How do I unindent a block of code in Vim?
Which way does the Earth rotate, east to west? | Which way does the Earth rotate, west to east?
How do I move a line up in VS Code? | How do I move a line down in VS Code?
How do I turn the heating up on a Nest thermostat? | How do I turn the heating down on a Nest thermostat?""",
"units": """How many grams of sugar are in a tablespoon? | How many grams of sugar are in a teaspoon?
How many calories are in a cup of rice? | How many calories are in a pound of rice?
What is 5 miles in kilometers? | What is 5 kilometers in miles?
How many ounces are in a liter? | How many ounces are in a gallon?
Convert 100 Fahrenheit to Celsius | Convert 100 Celsius to Fahrenheit
How long does it take to walk a mile? | How long does it take to walk a kilometer?
How many minutes should I roast a chicken per pound? | How many minutes should I roast a chicken per kilogram?
What is the price of gold per ounce? | What is the price of gold per gram?
How many cups of flour are in a pound? | How many cups of flour are in a kilogram?
How many seconds are in an hour? | How many seconds are in a day?
How many feet are in a mile? | How many yards are in a mile?
How many megabytes are in a gigabyte? | How many kilobytes are in a gigabyte?
What is the speed of light in miles per hour? | What is the speed of light in kilometers per second?
How much does a liter of milk weigh? | How much does a gallon of milk weigh?
How many tablespoons are in a cup? | How many teaspoons are in a cup?
What is 20 pounds in kilograms? | What is 20 kilograms in pounds?
How many square feet are in an acre? | How many square meters are in an acre?
How many liters of paint do I need per square meter? | How many liters of paint do I need per square foot?
How many milliliters are in a shot glass? | How many ounces are in a shot glass?
Convert 3 inches to centimeters | Convert 3 centimeters to inches
What is the population density of Texas per square mile? | What is the population density of Texas per square kilometer?
How many bytes are in a kilobyte? | How many bits are in a kilobyte?
How many carbs are in a slice of bread? | How many carbs are in a loaf of bread?
How much caffeine is in a cup of coffee? | How much caffeine is in a pot of coffee?
How much rice should I cook for two people? | How much rice should I cook for ten people?
How many pints are in a quart? | How many pints are in a gallon?
What is the weight of a cubic meter of water? | What is the weight of a cubic foot of water?
How many watts does a kettle use per minute? | How many watts does a kettle use per hour?
Сколько граммов в столовой ложке сахара? | Сколько граммов в чайной ложке сахара?""",
"scope": """What is a normal heart rate for a child? | What is a normal heart rate for an adult?
How much sleep does a toddler need? | How much sleep does a teenager need?
What is the recommended dose of paracetamol for adults? | What is the recommended dose of paracetamol for children?
How much protein does a woman need per day? | How much protein does a man need per day?
What vaccines does a puppy need? | What vaccines does an adult dog need?
What are the tax brackets for single filers? | What are the tax brackets for married couples?
How do I make a vegan lasagna? | How do I make a lasagna?
How do I make gluten-free waffles? | How do I make waffles?
What should I pack for a beach holiday? | What should I pack for a ski holiday?
What are good exercises for seniors? | What are good exercises for teenagers?
How do I write a cover letter for an internship? | How do I write a cover letter for a senior position?
How long can cooked chicken stay in the fridge? | How long can raw chicken stay in the fridge?
How long can cooked rice be kept at room temperature? | How long can cooked rice be kept in the freezer?
What are the symptoms of a heart attack in women? | What are the symptoms of a heart attack in men?
How much should I feed a kitten? | How much should I feed an adult cat?
What's the best laptop for gaming? | What's the best laptop for students?
How do I care for an indoor succulent? | How do I care for an outdoor succulent?
Is it safe to take ibuprofen during pregnancy? | Is it safe to take ibuprofen while breastfeeding?
What is the average salary of a junior software engineer? | What is the average salary of a senior software engineer?
How many calories should a sedentary person eat? | How many calories should an athlete eat?
How do I clean a wool sweater by hand? | How do I clean a wool sweater in the washing machine?
What is the best diet for a diabetic? | What is the best diet for an athlete?
What are the rules for carry-on luggage on domestic flights? | What are the rules for carry-on luggage on international flights?
Which running shoes are best for flat feet? | Which running shoes are best for high arches?
How do I teach a child to swim? | How do I teach an adult to swim?
How should I dress for a job interview at a bank? | How should I dress for a job interview at a startup?
How much water does a tomato plant in a pot need? | How much water does a tomato plant in the ground need?
What is the speed limit for trucks on motorways? | What is the speed limit for cars on motorways?
How do I file taxes as a freelancer? | How do I file taxes as an employee?
What are the side effects of this vaccine in infants? | What are the side effects of this vaccine in the elderly?
How do I get a student visa? | How do I get a work visa?
Какой нормальный пульс у ребёнка? | Какой нормальный пульс у взрослого?""",
}


def lang_of(text):
    return "ru" if any("\u0400" <= c <= "\u04ff" for c in text) else "en"


def out(a, b, hit, kind):
    print(json.dumps({"a": a.strip(), "b": b.strip(), "hit": hit, "kind": kind, "lang": lang_of(a)}, ensure_ascii=False))


for line in POS.split("\n"):
    a, b = line.split(" | ")
    out(a, b, True, "paraphrase")
for kind, text in NEG.items():
    for line in text.split("\n"):
        a, b = line.split(" | ")
        out(a, b, False, kind)
