"""Pages and pictures, made from results that are already computed.

:mod:`~normprobe.render.page` holds what every normprobe HTML page shares (one stylesheet, the
page shell, tables, embedded images); :mod:`~normprobe.render.contact_sheet` draws ``rank``'s
contact sheets. Nothing here imports scoring or analysis code: rendering reads tables and
records and never computes a score.
"""
