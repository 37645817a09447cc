"""The wiring layer: the only package that joins the stages (rules -> probe -> freeze -> core
-> store -> ctl). ``snapd daemon`` is :mod:`snapd.daemon.cli` and :mod:`snapd.daemon.service`;
``snapd check`` is :mod:`snapd.daemon.check`, which loads rules into the probe layer.

Nothing is imported here, so that ``snapd check`` does not load the store or the ctl server.
"""
