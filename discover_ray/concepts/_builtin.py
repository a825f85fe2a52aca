"""Small concept sets we ship: CIFAR-10 classes, CIFAR-100 classes and their 20 superclasses.

Names are written for a text encoder: underscores become spaces ("maple_tree" → "maple tree"). Order is
the datasets' label order, so concept i of ``cifar10`` / ``cifar100`` is class i.
"""

from __future__ import annotations

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Superclass → its five classes, in the superclass (coarse label) order of CIFAR-100.
CIFAR100_SUPERCLASS_MEMBERS: dict[str, tuple[str, ...]] = {
    "aquatic mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit and vegetables": ("apple", "mushroom", "orange", "pear", "sweet pepper"),
    "household electrical devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large man-made outdoor things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large natural outdoor scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large omnivores and herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium-sized mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple tree", "oak tree", "palm tree", "pine tree", "willow tree"),
    "vehicles 1": ("bicycle", "bus", "motorcycle", "pickup truck", "train"),
    "vehicles 2": ("lawn mower", "rocket", "streetcar", "tank", "tractor"),
}

# The fine labels in label order (alphabetical by the datasets' original underscore names).
CIFAR100 = tuple(
    sorted(
        (c for members in CIFAR100_SUPERCLASS_MEMBERS.values() for c in members),
        key=lambda name: name.replace(" ", "_"),
    )
)

CIFAR100_SUPERCLASSES = tuple(CIFAR100_SUPERCLASS_MEMBERS)

BUILTIN: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "cifar100_superclasses": CIFAR100_SUPERCLASSES,
}


#: CIFAR-10's two superclasses (the LE(Label) concepts on CIFAR-10: 10 classes + 2 superclasses)
CIFAR10_SUPERCLASS_MEMBERS: dict[str, tuple[str, ...]] = {
    "animal": ("bird", "cat", "deer", "dog", "frog", "horse"),
    "vehicle": ("airplane", "automobile", "ship", "truck"),
}
