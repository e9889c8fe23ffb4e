"""The model card's metrics read at a glance: one table, a row a metric and a
column a slice (overall, then each provider), counts as whole numbers, and
the change against the baseline only when the baseline was another model.

The page is read back with the standard library's HTML parser, as a browser
would lay out the table; the card is checked against model-card-toolkit's schema.
"""

from html.parser import HTMLParser

from tfx.types import standard_artifacts

from histopipe.components.model_card import card as model_card
from histopipe.components.model_card.executor import compared_with_another_model
from histopipe.core.configs import demo_config

METRICS = {
    "overall": {"example_count": 19.0, "kappa": 0.8123456, "kappa_diff": 0.0201,
                "grade_accuracy": 0.5},
    "radboud": {"example_count": 11.0, "kappa": 0.75, "kappa_diff": -0.031,
                "grade_accuracy": 0.45},
    "karolinska": {"example_count": 8.0, "kappa": 0.9, "kappa_diff": 0.0,
                   "grade_accuracy": 0.625},
}


class _Tables(HTMLParser):
  """Every table of a page as rows of cell texts."""

  def __init__(self):
    super().__init__()
    self.tables, self._cell = [], None

  def handle_starttag(self, tag, attrs):
    if tag == "table":
      self.tables.append([])
    elif tag == "tr":
      self.tables[-1].append([])
    elif tag in ("td", "th"):
      self._cell = ""

  def handle_endtag(self, tag):
    if tag in ("td", "th"):
      self.tables[-1][-1].append(self._cell)
      self._cell = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell += data


def _card(other_baseline):
  card = model_card.build_card(demo_config(), None, {"eval": {"radboud": 11, "karolinska": 8}},
                               {}, METRICS, {"summary": "input drift: none"}, True, {}, {},
                               synthetic_data=True, other_baseline=other_baseline)
  model_card.validate(card)
  return card


def _metrics_table(card):
  parser = _Tables()
  parser.feed(model_card.render_html(card))
  (table,) = [t for t in parser.tables if t and t[0][:1] == ["metric"]]
  return {row[0]: dict(zip(table[0][1:], row[1:])) for row in table[1:]}, table[0]


def test_one_table_metric_by_slice_counts_whole_and_no_change_against_the_model_itself():
  card = _card(other_baseline=False)
  table, header = _metrics_table(card)
  assert header == ["metric", "overall", "karolinska", "radboud"]
  assert list(table) == ["example_count", "grade_accuracy", "kappa"]  # counts first
  assert table["example_count"] == {"overall": "19", "karolinska": "8", "radboud": "11"}
  assert table["kappa"] == {"overall": "0.8123", "karolinska": "0.9000", "radboud": "0.7500"}
  # No baseline but the model itself: no change is shown anywhere.
  types = {m["type"] for m in card["quantitative_analysis"]["performance_metrics"]}
  assert not any(t.endswith("_diff") for t in types)
  assert "vs baseline" not in model_card.render_html(card)


def test_the_change_against_another_baseline_is_beside_each_value():
  table, _ = _metrics_table(_card(other_baseline=True))
  assert table["kappa"] == {"overall": "0.8123 (+0.0201 vs baseline)",
                            "karolinska": "0.9000 (+0.0000 vs baseline)",
                            "radboud": "0.7500 (-0.0310 vs baseline)"}
  assert table["example_count"]["overall"] == "19"


def test_another_baseline_is_told_from_the_evaluators_blessing():
  blessing = standard_artifacts.ModelBlessing()
  assert not compared_with_another_model(blessing)  # no baseline (the first model)
  blessing.set_int_custom_property("current_model_id", 7)
  blessing.set_int_custom_property("baseline_model_id", 7)
  assert not compared_with_another_model(blessing)  # a re-run: the model itself
  blessing.set_int_custom_property("baseline_model_id", 5)
  assert compared_with_another_model(blessing)
