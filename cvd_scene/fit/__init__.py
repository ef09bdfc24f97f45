"""Fitting a scene through nerfstudio: the rasteriser, the dataparser, the models and the method configs.

The only subpackage of cvd_scene that imports nerfstudio and gsplat; :mod:`cvd_scene.fit.raster` imports neither
nerfstudio nor (off CUDA) gsplat, so it can be used on its own. Import submodules directly.
"""
