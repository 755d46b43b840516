"""`cryogmm --help`: the commands and the references the help cites."""

from __future__ import annotations

import pytest

from cryogmm.cli import main


def test_help_cites_the_thesis_and_the_em_derivation(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Paul Joubert, A Bayesian approach to initial model inference in cryo-electron microscopy" in text
    assert "Georg-August-Universität Göttingen, 2016" in text
    assert '"CryoEM Report 08/08: Derivation of EM algorithm" (2018)' in text
    assert text.count("Joubert") == 1
