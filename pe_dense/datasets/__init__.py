"""Data that the project writes itself: :mod:`pe_dense.datasets.mini`, the synthetic mini datasets
in the COCO 2017, ADE20K and ImageNet on-disk layouts (``tools/make_mini_data.py``).

Nothing is imported here, so ``import pe_dense`` stays free of OpenCV; import the module itself.
"""
