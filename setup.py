"""ctrflow: a production training pipeline for ads CTR models on TensorFlow/Keras."""
from setuptools import find_packages, setup

setup(
    name="ctrflow",
    version="0.1.0",
    description="Ads CTR training pipeline: Beam preprocessing, Keras models, TF Serving export",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["features*", "models*", "pipeline*", "serving*"]),
    package_data={"pipeline": ["default_configs/*.yaml"]},
    install_requires=[
        "tensorflow==2.17.*",
        "tf-keras==2.17.*",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-io==0.37.1",
        "apache-beam[dask]==2.77.*",
        "tensorflow-serving-api==2.17.*",
        "numpy<2",
        "pandas<2.3",
        "pyarrow",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "scipy",
        "pyfarmhash==0.5.1",
        "google-crc32c==1.9.0",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "pytest-xdist", "scikit-learn"]},
    entry_points={"console_scripts": ["ctrflow=pipeline.cli:main"]},
)
