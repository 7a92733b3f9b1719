"""Closed word lists for the rule-based negatives and the validator.

Replacements are drawn from *contrast classes*: words of one class in different groups contradict each other
("red"/"blue", "big"/"small", "on"/"under"), words of one group are near-synonyms and never replace each other
("big"/"large"). Curated lists rather than WordNet: WordNet co-hyponyms include many synonyms and hypernyms
("dog" -> "puppy"), which would make false negatives, and it is not installable offline without a fix-up.
"""
from typing import Dict, Optional, Tuple

ARTICLES = frozenset({"a", "an", "the"})
DETERMINERS = ARTICLES | frozenset({"this", "that", "these", "those", "some", "any", "each", "every", "his", "her",
                                    "its", "their", "my", "your", "our", "another", "no"})
FUNCTION_WORDS = DETERMINERS | frozenset({
    "i", "you", "he", "she", "it", "we", "they", "me", "him", "us", "them", "who", "whom", "which", "what",
    "and", "or", "but", "nor", "so", "yet", "if", "while", "as", "than",
    "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "onto", "over", "under", "up", "down",
    "off", "out", "about", "near", "next", "behind", "above", "below", "across", "through", "around", "between",
    "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do", "does", "did",
    "there", "here", "not"})

#: Words whose first letter is a vowel but which take "a", and vice versa (a/an agreement).
A_BEFORE_VOWEL_PREFIXES = ("uni", "use", "usu", "uti", "ute", "uri", "ure", "uro", "eu", "ewe", "one", "once", "ufo",
                           "uk")
AN_BEFORE_CONSONANT_PREFIXES = ("hour", "honest", "honor", "honour", "heir", "8")
AN_NUMBERS = ("11", "18")


# ----------------------------------------------------------------------------- nouns

def _groups(*groups: str) -> Tuple[Tuple[Tuple[str, Optional[str]], ...], ...]:
    """``"dog/dogs puppy/puppies"`` -> ((("dog", "dogs"), ("puppy", "puppies")),); ``"rice/"`` is a mass noun."""
    return tuple(tuple((w.split("/")[0], w.split("/")[1] or None) for w in g.split()) for g in groups)


#: Noun classes: a noun is replaced by a noun of the same class from another group, with the same number.
NOUN_CLASSES = {
    "people": _groups("man/men guy/guys gentleman/gentlemen", "woman/women lady/ladies", "boy/boys",
                      "girl/girls", "baby/babies toddler/toddlers"),
    "athletes": _groups("skier/skiers", "snowboarder/snowboarders", "surfer/surfers",
                        "skateboarder/skateboarders", "batter/batters", "pitcher/pitchers", "catcher/catchers"),
    "animals": _groups("dog/dogs puppy/puppies", "cat/cats kitten/kittens", "horse/horses pony/ponies",
                       "cow/cows bull/bulls calf/calves", "sheep/sheep lamb/lambs", "elephant/elephants",
                       "giraffe/giraffes", "zebra/zebras", "bear/bears", "duck/ducks", "pigeon/pigeons",
                       "seagull/seagulls gull/gulls", "goose/geese", "monkey/monkeys", "lion/lions",
                       "tiger/tigers", "deer/deer", "goat/goats", "pig/pigs", "rabbit/rabbits bunny/bunnies",
                       "squirrel/squirrels"),
    "vehicles": _groups("car/cars taxi/taxis", "bus/buses", "truck/trucks", "train/trains",
                        "bicycle/bicycles bike/bikes", "motorcycle/motorcycles motorbike/motorbikes",
                        "boat/boats ship/ships", "airplane/airplanes plane/planes jet/jets", "van/vans",
                        "scooter/scooters", "tractor/tractors"),
    "food": _groups("pizza/pizzas", "sandwich/sandwiches", "banana/bananas", "apple/apples",
                    "donut/donuts doughnut/doughnuts", "cake/cakes", "carrot/carrots",
                    "hamburger/hamburgers burger/burgers", "cookie/cookies", "muffin/muffins",
                    "cupcake/cupcakes", "salad/salads", "egg/eggs", "tomato/tomatoes", "lemon/lemons"),
    "food_mass": _groups("broccoli/", "rice/", "bread/", "cheese/", "meat/", "pasta/ spaghetti/", "soup/"),
    "furniture": _groups("chair/chairs", "table/tables", "couch/couches sofa/sofas", "bed/beds",
                         "bench/benches", "desk/desks", "shelf/shelves"),
    "appliances": _groups("toilet/toilets", "sink/sinks", "refrigerator/refrigerators fridge/fridges",
                          "oven/ovens stove/stoves", "microwave/microwaves", "bathtub/bathtubs tub/tubs"),
    "electronics": _groups("laptop/laptops", "television/televisions tv/tvs", "phone/phones cellphone/cellphones",
                           "keyboard/keyboards", "remote/remotes", "camera/cameras"),
    "kitchenware": _groups("cup/cups mug/mugs", "bowl/bowls", "plate/plates dish/dishes", "bottle/bottles",
                           "knife/knives", "fork/forks", "spoon/spoons", "vase/vases", "pot/pots", "pan/pans"),
    "sports": _groups("ball/balls", "frisbee/frisbees", "kite/kites", "skateboard/skateboards",
                      "surfboard/surfboards", "snowboard/snowboards", "racket/rackets racquet/racquets",
                      "bat/bats"),
    "accessories": _groups("umbrella/umbrellas", "suitcase/suitcases", "backpack/backpacks",
                           "handbag/handbags purse/purses", "book/books", "clock/clocks"),
    "clothing": _groups("shirt/shirts", "jacket/jackets coat/coats", "hat/hats cap/caps", "dress/dresses",
                        "helmet/helmets", "tie/ties", "scarf/scarves", "sweater/sweaters", "suit/suits",
                        "uniform/uniforms"),
    "places": _groups("beach/beaches", "street/streets road/roads", "field/fields", "park/parks",
                      "city/cities town/towns", "zoo/zoos", "yard/yards",
                      "forest/forests", "ocean/oceans sea/seas", "lake/lakes", "river/rivers",
                      "mountain/mountains hill/hills", "sidewalk/sidewalks"),
    "rooms": _groups("kitchen/kitchens", "bathroom/bathrooms", "bedroom/bedrooms", "office/offices",
                     "restaurant/restaurants"),
    "terrain": _groups("grass/", "sand/", "snow/", "water/", "dirt/ mud/"),
}
#: Cover terms for people: never a replacement ("a man" -> "a person" is true) and replaced only by an animal
#: ("a person" -> "a woman" may be true as well).
NOUN_SOURCE_ONLY = _groups("person/people child/children kid/kids adult/adults")
NOUN_SOURCE_ONLY_CLASS = "animals"
ANIMATE_CLASSES = frozenset({"people", "athletes", "animals"})
#: Classes whose nouns are settings rather than objects: no spatial swaps or "in" replacements with them.
SCENE_CLASSES = frozenset({"places", "rooms", "terrain", "clothing"})
#: Weather, light and sky: settings like SCENE_CLASSES ("in the rain" is not "on the rain").
SETTING_NOUNS = frozenset({"rain", "sun", "sunshine", "sunlight", "shade", "shadow", "shadows", "wind", "fog", "mist",
                           "night", "dark", "darkness", "daylight", "sky", "air", "distance", "weather", "snow",
                           "floor", "ground", "wall", "walls", "ceiling"})
#: Nouns that name a part, side or amount of another noun ("on top of", "a group of"): never swapped or edited.
RELATIONAL_NOUNS = frozenset({
    "top", "front", "side", "middle", "edge", "back", "bottom", "left", "right", "center", "centre", "corner",
    "end", "group", "groups", "couple", "bunch", "pair", "lot", "lots", "herd", "flock", "number", "piece",
    "pieces", "slice", "slices", "kind", "type", "view", "picture", "photo", "image", "shot", "close", "closeup",
    "part", "half", "row", "line", "set", "variety", "display", "pile", "stack", "array", "assortment", "way",
    "lots", "background", "foreground", "air", "sky", "day", "night", "time", "area", "thing", "things", "year",
    "years", "month", "months", "week", "weeks", "hour", "hours", "minute", "minutes"})
#: Nouns that hold what their "of" phrase names ("a cup of coffee"): replaced only by each other.
CONTAINER_NOUNS = frozenset({"cup", "cups", "mug", "mugs", "bowl", "bowls", "plate", "plates", "dish", "dishes",
                             "bottle", "bottles", "vase", "vases", "pot", "pots", "pan", "pans", "box", "boxes",
                             "basket", "baskets", "bag", "bags", "jar", "jars", "tray", "trays"})
#: Modifier + noun pairs that name one thing: neither word is replaced or swapped on its own.
FIXED_PHRASES = frozenset({
    "hot dog", "hot dogs", "polar bear", "polar bears", "teddy bear", "teddy bears", "red light", "green light",
    "fire hydrant", "fire hydrants", "stop sign", "stop signs", "cell phone", "cell phones", "ice cream",
    "living room", "first base", "home plate", "big ben", "white house", "black bear", "brown bear",
    "hot sauce", "double decker", "red sox", "french fries", "green beans", "year old", "years old", "month old",
    "months old", "week old", "weeks old"})


def _noun_index():
    index: Dict[str, Tuple[str, int, str]] = {}
    for cls, groups in NOUN_CLASSES.items():
        for g, group in enumerate(groups):
            for sing, plur in group:
                if plur is None:
                    index[sing] = (cls, g, "mass")
                elif plur == sing:
                    index[sing] = (cls, g, "both")
                else:
                    index[sing] = (cls, g, "sing")
                    index[plur] = (cls, g, "plur")
    for group in NOUN_SOURCE_ONLY:
        for sing, plur in group:
            index[sing] = (NOUN_SOURCE_ONLY_CLASS, -1, "sing")
            index[plur] = (NOUN_SOURCE_ONLY_CLASS, -1, "plur")
    return index


#: word -> (class, group index (-1: source only), number: "sing" | "plur" | "both" | "mass")
NOUN_INFO = _noun_index()


# ----------------------------------------------------------------------------- adjectives

#: Adjective classes; any word of another group in the same class contrasts with a word.
ADJ_CLASSES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "colour": (("red",), ("orange",), ("yellow",), ("green",), ("blue",), ("purple",), ("pink",), ("brown",),
               ("black",), ("white",), ("gray", "grey"), ("silver",)),
    "size": (("big", "large", "huge", "giant", "enormous", "massive"), ("small", "little", "tiny")),
    "height": (("tall",), ("short",)),
    "length": (("long",), ("short",)),
    "width": (("wide",), ("narrow",)),
    "thickness": (("thick",), ("thin",)),
    "age": (("young",), ("old", "elderly")),
    "age_comparative": (("younger",), ("older",)),
    "newness": (("new",), ("old",)),
    "count_word": tuple((w,) for w in ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")),
    "count_digit": tuple((str(i),) for i in range(2, 11)),
    "material": (("wooden", "wood"), ("metal", "metallic", "steel", "iron"), ("plastic",), ("glass",),
                 ("stone",), ("brick",), ("leather",), ("paper", "cardboard"), ("ceramic", "porcelain"),
                 ("concrete", "cement")),
    "pattern": (("striped",), ("spotted", "polka"), ("checkered", "plaid"), ("floral",)),
    "temperature": (("hot", "warm"), ("cold", "cool", "chilly")),
    "wetness": (("wet",), ("dry",)),
    "cleanliness": (("clean",), ("dirty", "messy")),
    "fullness": (("empty",), ("full",)),
    "openness": (("open",), ("closed", "shut")),
    "mood": (("happy",), ("sad", "unhappy")),
    "speed": (("fast",), ("slow",)),
    "weather": (("sunny", "clear"), ("cloudy", "overcast", "rainy", "stormy")),
    "light": (("bright",), ("dark", "dim")),
    "crowd": (("crowded", "busy"), ("deserted",)),
}
#: Ambiguous words that are never replaced themselves ("short hair" vs "a short man"; "clear glass").
ADJ_NO_SOURCE = frozenset({"short", "clear", "cool", "warm", "polka", "iron", "wood", "glass", "paper", "little"})
#: Rare or odd words that are recognised but never chosen as a replacement ("a young boy" -> "an elderly boy").
ADJ_NO_TARGET = frozenset({"elderly", "massive", "enormous", "cement", "metallic", "porcelain", "cardboard", "shut",
                           "stormy", "overcast", "polka", "unhappy", "chilly", "cool", "warm", "clear"})
#: Replacements that only fit people and animals, or only things ("a new man", "a young car").
ADJ_ANIMATE_ONLY = frozenset({"young", "younger", "elderly", "happy", "sad", "unhappy"})
ADJ_INANIMATE_ONLY = frozenset({"new", "wooden", "wood", "metal", "metallic", "steel", "iron", "plastic",
                                "glass", "stone", "brick", "leather", "paper", "cardboard", "ceramic",
                                "porcelain", "concrete", "cement", "empty", "full", "open", "closed", "shut"})
#: Adjectives that do not describe their noun ("the other dog", "the same table"): never swapped.
NON_ATTRIBUTE_ADJ = frozenset({
    "other", "same", "different", "many", "few", "several", "next", "last", "first", "second", "third", "only",
    "own", "such", "various", "multiple", "top", "main", "single", "whole", "entire", "more", "most", "certain",
    "front", "back", "numerous", "much", "lots", "same", "close", "very"})


def _adj_contrast():
    out: Dict[str, Tuple[str, ...]] = {}
    for groups in ADJ_CLASSES.values():
        for g, group in enumerate(groups):
            others = tuple(w for h, other in enumerate(groups) if h != g for w in other)
            for word in group:
                out[word] = tuple(dict.fromkeys(out.get(word, ()) + others))
    return out


#: word -> contrasting words (union over the classes the word is in).
ADJ_CONTRAST: Dict[str, Tuple[str, ...]] = _adj_contrast()

#: Attributes that add_attribute may put before a noun of each class.
_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "pink", "purple", "brown")
ATTRIBUTES_FOR_CLASS: Dict[str, Tuple[str, ...]] = {
    "people": ("young", "old", "tall", "happy"),
    "athletes": ("young", "old", "tall"),
    "animals": ("black", "white", "brown", "gray", "small", "large", "young"),
    "vehicles": ("red", "blue", "white", "black", "yellow", "green", "old", "new", "small", "large"),
    "food": ("small", "large"),
    "furniture": ("wooden", "metal", "white", "black", "brown", "red", "old", "small", "large"),
    "appliances": ("white", "black", "old", "new", "small", "large"),
    "electronics": ("black", "white", "old", "new", "small", "large"),
    "kitchenware": ("white", "blue", "red", "green", "small", "large"),
    "sports": _COLOURS,
    "accessories": _COLOURS + ("small", "large"),
    "clothing": _COLOURS + ("striped",),
    "places": ("sunny", "large", "small"),
    "rooms": ("small", "large", "clean", "dirty", "dark", "bright"),
}


# ----------------------------------------------------------------------------- relations

#: Relation phrase -> contrasting phrases; "prep" phrases must introduce a noun phrase, "verb" ones are verbs.
PREP_CONTRAST: Dict[str, Tuple[str, ...]] = {
    "on": ("under", "beside"), "under": ("on", "above"), "underneath": ("on top of", "above"),
    "beneath": ("above", "on"), "below": ("above",), "above": ("below", "under"), "over": ("under",),
    "on top of": ("under", "underneath", "beside"), "atop": ("under", "beside"),
    "in front of": ("behind",), "behind": ("in front of",), "inside": ("outside",), "outside": ("inside",),
    "inside of": ("outside of",), "outside of": ("inside of",), "into": ("out of",), "out of": ("into",),
    "toward": ("away from",), "towards": ("away from",), "away from": ("toward",), "near": ("far from",),
    "next to": ("far from", "on top of"), "beside": ("far from", "on top of"), "far from": ("next to",),
    "left of": ("right of",), "right of": ("left of",), "with": ("without",), "without": ("with",),
    "in": ("on", "under"),
}
#: "in" only contrasts with "on"/"under" for containers and vehicles ("in a bowl"), not places or clothes.
IN_CONTRAST_CLASSES = frozenset({"vehicles", "furniture", "appliances", "kitchenware", "accessories"})
#: "with"/"without" only for a noun's attachment ("a plate with food"), not "playing with".
NOUN_ONLY_PREPS = frozenset({"with", "without"})
VERB_CONTRAST: Dict[str, Tuple[str, ...]] = {
    "holding": ("dropping", "throwing"), "holds": ("drops", "throws"),
    "throwing": ("catching", "holding"), "throws": ("catches", "holds"),
    "catching": ("throwing", "dropping"), "catches": ("throws", "drops"),
    "sitting": ("standing", "lying"), "sits": ("stands", "lies"),
    "standing": ("sitting", "lying"), "stands": ("sits", "lies"),
    "lying": ("standing", "sitting"), "laying": ("standing", "sitting"), "lies": ("stands", "sits"),
    "walking": ("running",), "walks": ("runs",), "running": ("walking",), "runs": ("walks",),
    "riding": ("carrying", "pushing"), "rides": ("carries", "pushes"),
    "carrying": ("riding", "dropping"), "carries": ("rides", "drops"),
    "pushing": ("pulling",), "pushes": ("pulls",), "pulling": ("pushing",), "pulls": ("pushes",),
    "opening": ("closing",), "opens": ("closes",), "closing": ("opening",), "closes": ("opens",),
    "entering": ("leaving",), "enters": ("leaves",), "leaving": ("entering",), "leaves": ("enters",),
    "smiling": ("frowning",), "smiles": ("frowns",), "laughing": ("crying",), "crying": ("laughing",),
    "chasing": ("fleeing",), "chases": ("flees",), "following": ("leading",), "leading": ("following",),
    "landing": ("taking off",), "taking off": ("landing",), "parked": ("driving",),
    "wearing": ("holding",), "wears": ("holds",),
}
#: Inflections of the relation verbs: forms of one verb are synonyms ("sitting" -> "sits" is no change).
VERB_FORMS = (
    ("holding", "holds", "hold", "held"), ("dropping", "drops", "drop", "dropped"),
    ("throwing", "throws", "throw", "threw", "thrown"), ("catching", "catches", "catch", "caught"),
    ("sitting", "sits", "sit", "sat", "seated"), ("standing", "stands", "stand", "stood"),
    ("lying", "lies", "lie", "laying", "lays", "lay", "lain"), ("walking", "walks", "walk", "walked"),
    ("running", "runs", "run", "ran"), ("riding", "rides", "ride", "rode", "ridden"),
    ("carrying", "carries", "carry", "carried"), ("pushing", "pushes", "push", "pushed"),
    ("pulling", "pulls", "pull", "pulled"), ("opening", "opens", "opened"), ("closing", "closes"),
    ("entering", "enters", "enter", "entered"), ("leaving", "leave"), ("smiling", "smiles", "smile", "smiled"),
    ("frowning", "frowns", "frown", "frowned"), ("laughing", "laughs", "laugh", "laughed"),
    ("crying", "cries", "cry", "cried"), ("chasing", "chases", "chase", "chased"),
    ("fleeing", "flees", "flee", "fled"), ("following", "follows", "follow", "followed"),
    ("leading", "leads", "lead", "led"), ("landing", "lands", "land", "landed"),
    ("parked", "parking"), ("driving", "drives", "drive", "drove", "driven"),
    ("wearing", "wears", "wear", "wore", "worn"),
)
#: Verbs whose contrast only fits without an object or a goal ("walking a dog", "throwing a ball to a dog").
VERB_NO_OBJECT = frozenset({"walking", "walks", "running", "runs"})
VERB_NO_GOAL = frozenset({"throwing", "throws"})
#: Near-synonymous relation phrases: never each other's replacement (checked by the validator too).
RELATION_SYNONYMS = (
    ("on", "atop", "upon", "on top of", "onto"), ("under", "beneath", "underneath", "below"),
    ("above", "over"), ("next to", "beside", "near", "by", "alongside", "close to"),
    ("in", "inside", "within", "inside of"), ("outside", "outside of"), ("toward", "towards"),
    ("lying", "laying"), ("holding", "carrying", "gripping"), ("sitting", "seated"),
)

#: Prepositions whose arguments can be exchanged to reverse who-is-where ("a cat on a dog"): not the
#: symmetric ones ("next to", "near", "with"), and not "of", "at", "for".
SWAP_PREPS = frozenset({"on", "under", "above", "below", "over", "beneath", "underneath", "in", "inside", "into",
                        "onto", "atop", "behind", "on top of", "in front of", "inside of"})
#: Verbs of position: a verb-attached spatial phrase describes the subject ("a cat sitting on a table").
LOCATIVE_VERBS = frozenset({"sit", "stand", "lie", "lay", "rest", "sleep", "perch", "park", "hang", "place", "set",
                            "lean", "float", "stack", "pile", "put", "hide", "stick", "balance"})
#: Verbs whose subject and object play the same role: exchanging them does not change the meaning.
SYMMETRIC_VERBS = frozenset({"hug", "kiss", "meet", "marry", "touch", "face", "fight", "share", "resemble",
                             "match", "join", "accompany", "greet"})

#: Near-synonyms outside the classes above (class groups already count as synonyms).
SYNONYMS = (
    ("man", "guy", "gentleman", "male"), ("woman", "lady", "female"), ("child", "kid"), ("couch", "sofa"),
    ("bicycle", "bike"), ("motorcycle", "motorbike"), ("airplane", "plane", "jet", "aircraft"),
    ("tv", "television"), ("phone", "cellphone", "telephone"), ("cup", "mug"), ("road", "street"),
    ("kitten", "cat"), ("puppy", "dog"), ("big", "large", "huge", "giant"), ("small", "little", "tiny"),
    ("gray", "grey"), ("picture", "photo", "image"), ("shirt", "tshirt", "tee"),
)


def _synonym_index():
    index: Dict[str, int] = {}
    groups = list(SYNONYMS) + list(RELATION_SYNONYMS) + list(VERB_FORMS)
    groups += [group for cls in ADJ_CLASSES.values() for group in cls if len(group) > 1]
    groups += [tuple(w for pair in group for w in pair if w) for cls in NOUN_CLASSES.values() for group in cls]
    merged: Dict[str, set] = {}
    for group in groups:
        members = set(group)
        for word in group:
            members |= merged.get(word, set())
        for word in members:
            merged[word] = members
    for i, members in enumerate({frozenset(m) for m in merged.values()}):
        for word in members:
            index[word] = i
    return index


#: word or phrase -> synonym-group id (words with the same id are near-synonyms).
SYNONYM_GROUP: Dict[str, int] = _synonym_index()
