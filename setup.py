"""Packaging for pe-dense, an MMDetection 3.x / MMSegmentation 1.x / MMPretrain 1.x plugin.

mmcv 2.x has no wheels on PyPI: build it first (``tools/setup_env.sh`` does, and caches the
wheel), or install a CUDA build from OpenMMLab's wheel index, then ``pip install -e .``.
"""
from setuptools import find_packages, setup

setup(
    name='pe-dense',
    version='0.1.0',
    description='Position encodings (absolute, PEG, LaPE, PVG, MPVG) for ViT-Adapter '
    'in MMDetection 3.x and MMSegmentation 1.x, pre-trained with MMPretrain 1.x',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['pe_dense', 'pe_dense.*']),
    python_requires='>=3.9',
    install_requires=[
        # weights_only loading with a scoped allow-list of (object, name) pairs needs torch 2.6;
        # torch.compiler.is_exporting (the PE table, the grid caches and deformable attention
        # call it in every forward) first appeared in torch 2.7.
        'torch>=2.7',
        'torchvision',
        'mmengine==0.10.7',
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet==3.3.0',
        'mmsegmentation==1.2.2',
        'mmpretrain==1.2.0',
        # 1.0.29: resample_abs_pos_embed resamples a non-square table to a square grid with the
        # same token count (earlier releases returned it unchanged whenever the token counts
        # matched and the new grid was square, whatever old_size said).
        'timm>=1.0.29',
        'pycocotools',
        # mmseg imports these without declaring them.
        'ftfy',
        'regex',
        # mmengine imports pkg_resources at run time; setuptools 81 removed it.
        'setuptools<81',
    ],
    extras_require={
        'tests': ['pytest', 'ruff', 'matplotlib'],
        # ONNX export (tools/export_onnx.py): torch's exporter needs onnxscript; onnxruntime
        # checks the exported file.
        'deploy': ['onnx>=1.16', 'onnxscript>=0.3', 'onnxruntime>=1.18'],
    },
    zip_safe=False,
)
