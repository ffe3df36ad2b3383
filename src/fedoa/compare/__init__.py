"""The comparison of methods (``fedoa compare``): the runner (:mod:`.runner`: several methods x
seeds x held-out categories under one protocol), the statistics (:mod:`.stats`: the table over
seeds and paired bootstrap intervals) and the rendering (:mod:`.render`: Markdown, HTML, plots).

Layering inside: ``stats`` at the bottom (it owns the shared constants), ``render`` reads the
summary ``stats`` builds, ``runner`` runs the federations and calls both.
"""
