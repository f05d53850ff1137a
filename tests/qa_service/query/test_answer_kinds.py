from __future__ import annotations

import pytest

from qa_service.query.answer_kinds import expected_kind, holds


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How many people attended it?", "quantity"),
        ("how much did the project cost?", "quantity"),
        ("What percentage of victims were children?", "quantity"),
        ("When did GRETA publish its report?", "time"),
        ("  When was the lighthouse built?", "time"),
        ("In which year was the law passed?", "time"),
        ("What is GRETA?", None),
        ("Who took part in the meeting in Skopje?", None),
        ("What happens when a child is identified?", None),  # "when" not asking for a time
        # The languages of the default corpus's readers.
        ("Koliko je ljudi uhapšeno?", "quantity"),
        ("Kolika je kazna za trgovinu ljudima?", "quantity"),
        ("Колико је деце идентификовано?", "quantity"),
        ("Колку луѓе присуствуваа?", "quantity"),
        ("Sa fëmijë u identifikuan si viktima?", "quantity"),
        ("Çfarë përqindje e viktimave janë fëmijë?", "quantity"),
        ("Koji je postotak djece među žrtvama?", "quantity"),
        ("Kada je objavljen izvještaj?", "time"),
        ("Када је усвојен закон?", "time"),
        ("Кога е основана мрежата?", "time"),
        ("Kur u themelua rrjeti?", "time"),
        ("Koje je godine usvojena Konvencija?", "time"),
        ("Во која година беше донесен законот?", "time"),
        ("Në cilin vit u miratua ligji?", "time"),
        ("Ko je izvršni sekretar Konvencije?", None),
        ("Çfarë është GRETA?", None),
        ("A është Shqipëria palë e Konventës sa i përket fëmijëve?", None),  # "sa" inside
        ("Wie viele Kinder wurden identifiziert?", None),  # another language: no kind
    ],
)
def test_the_kind_of_answer_a_question_asks_for(question: str, kind: str | None) -> None:
    assert expected_kind(question) == kind


@pytest.mark.parametrize(
    ("text", "quantity", "time"),
    [
        ("The 29 participants were drawn from BiH and France.", True, False),
        ("It cost $5 million, 1,200 more than planned.", True, False),
        ("Twelve people were arrested on 23 June 2015.", True, True),
        ("Over 40% of them were children.", True, False),
        ("The lighthouse was built in 1887.", False, True),  # a year is not a quantity
        ("The programme ran in 2019-2022.", False, True),
        ("They have since begun attending school.", False, False),
        ("One of them may return in the 1990s style.", False, True),  # "one", "may": no
        ("It may be one of the first steps.", False, False),
        ("By the end of the century, the town had grown.", False, True),
    ],
)
def test_what_a_sentence_holds(text: str, quantity: bool, time: bool) -> None:
    assert holds(text, "quantity") is quantity
    assert holds(text, "time") is time
