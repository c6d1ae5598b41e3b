"""Tiny synthetic image domains for the tests (see `smat_peft.testing`)."""

from smat_peft.testing import synthetic_domain


__all__ = ["synthetic_domain"]
