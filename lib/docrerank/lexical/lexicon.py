"""Word lists the ``rules`` engine types spans with. They say what *kind* a span is; they are never a source of
replacement values (those come from the corpus being built, see ``lexical.spans.Vocabulary``).

- organisation words: a capitalised name ending in one ("Boeing Company", "Amcor plc") or headed by one
  ("University of Chicago") is an organisation;
- honorifics and roles: a name after "Mr." or before ", Chief Executive Officer" is a person;
- places: countries, continents and world regions, US states (a place is typed by name, and by which of these it is);
- metric vocabularies: the paper's finance attributes (financial metric, subject metric, business segment);
- roles of people (a defendant for a plaintiff, a judge for an attorney), month names, the words that refer
  to a part of a document ("Table 2", "Section 3.4") and the kinds of things a document is made of (figures,
  tables, charts; chapters, sections; rows, columns; steps).
"""

from __future__ import annotations

ORG_SUFFIXES = frozenset(
    """inc incorporated corp corporation company co ltd limited llc llp lp plc ag sa se nv bv gmbh pty group holdings
    holding bank bancorp university institute college school association society council agency department
    ministry commission committee foundation trust fund partners airlines airways motors insurance industries
    technologies systems laboratories labs centre center court office bureau party union federation
    organization organisation board authority entertainment pharmaceuticals resorts""".split()
)
# organisation words that stand before "of": "University of Chicago", "Bank of America", "Society of ..."
ORG_HEADS = frozenset(
    """university institute college school association society council agency department ministry commission
    committee foundation bank bureau office court federation union board authority""".split()
)
# organisation words that keep "the" in a sentence ("the Boeing Company", "the Society of ...")
TAKES_THE = ORG_HEADS | frozenset("company corporation group fund trust partners party".split())

HONORIFICS = frozenset("mr mrs ms miss dr prof professor judge justice senator governor sir dame".split())
ROLE_WORDS = frozenset(
    """chief president vice director chairman chairwoman chair secretary treasurer officer ceo cfo coo cto esq
    judge counsel partner founder""".split()
)

# Question words and sentence openers: never part of a name at the start of a sentence.
SENTENCE_START = frozenset(
    """what which how when where who whom whose why did does do is are was were has have had can could will would
    should may might the a an in on at for of to by from as according among between during regarding based
    using given assume answer write list round return please if give calculate enumerate directly here you i
    approach base about because although while since after before under with without however our its this these
    such each other certain unless upon""".split()
)
CONNECTORS = frozenset(["of", "and", "&", "for", "de", "the"])

_COUNTRIES = """afghanistan albania algeria andorra angola argentina armenia australia austria azerbaijan bahamas
bahrain bangladesh barbados belarus belgium belize benin bhutan bolivia bosnia botswana brazil brunei bulgaria
burkina_faso burundi cambodia cameroon canada chad chile china colombia comoros congo costa_rica croatia cuba
cyprus czechia czech_republic denmark djibouti dominica dominican_republic ecuador egypt el_salvador eritrea
estonia eswatini ethiopia fiji finland france gabon gambia georgia germany ghana greece grenada guatemala guinea
guyana haiti honduras hong_kong hungary iceland india indonesia iran iraq ireland israel italy jamaica japan
jordan kazakhstan kenya kiribati korea south_korea north_korea kosovo kuwait kyrgyzstan laos latvia lebanon
lesotho liberia libya liechtenstein lithuania luxembourg macau madagascar malawi malaysia maldives mali malta
mauritania mauritius mexico moldova monaco mongolia montenegro morocco mozambique myanmar namibia nepal
netherlands new_zealand nicaragua niger nigeria norway oman pakistan panama paraguay peru philippines poland
portugal puerto_rico qatar romania russia rwanda samoa saudi_arabia senegal serbia seychelles sierra_leone
singapore slovakia slovenia somalia south_africa spain sri_lanka sudan suriname sweden switzerland syria taiwan
tajikistan tanzania thailand togo tonga trinidad tunisia turkey turkmenistan uganda ukraine united_arab_emirates
uae united_kingdom uk great_britain britain england scotland wales united_states usa us america uruguay
uzbekistan vanuatu venezuela vietnam viet_nam yemen zambia zimbabwe"""
_US_STATES = """alabama alaska arizona arkansas california colorado connecticut delaware florida georgia hawaii idaho
illinois indiana iowa kansas kentucky louisiana maine maryland massachusetts michigan minnesota mississippi
missouri montana nebraska nevada new_hampshire new_jersey new_mexico new_york north_carolina north_dakota ohio
oklahoma oregon pennsylvania rhode_island south_carolina south_dakota tennessee texas utah vermont virginia
washington west_virginia wisconsin wyoming"""
_REGIONS = """africa asia europe oceania antarctica north_america south_america latin_america central_america
middle_east southeast_asia east_asia south_asia asia_pacific apac emea americas caribbean scandinavia
western_europe eastern_europe sub-saharan_africa"""
PLACES = {w.replace("_", " "): kind for kind, words in (("country", _COUNTRIES), ("region", _REGIONS),
                                                        ("state", _US_STATES)) for w in words.split()}
"""Place name (lower case) -> ``country``, ``region`` or ``state``: a place is swapped for one of its own kind."""

# Metric vocabularies in families: a metric is swapped only for another of its family (an amount for an
# amount, a ratio for a ratio), so that the rewrite still asks for something of the same kind.
FINANCIAL_METRICS = (
    ("total revenue", "revenue", "net revenue", "net sales", "sales", "net income", "net earnings", "operating income",
     "gross profit", "operating expenses", "research and development expense", "cost of sales", "cost of goods sold",
     "income tax", "advertising expense", "depreciation", "amortization", "interest expense", "EBITDA"),
    ("gross margin", "operating margin", "net profit margin", "effective tax rate", "return on assets",
     "return on equity"),
    ("total assets", "total liabilities", "total current liabilities", "total current assets", "long-term debt",
     "total debt", "inventories", "accounts receivable", "accounts payable", "accrued liabilities", "goodwill",
     "retained earnings"),
    ("capital expenditure", "capital expenditures", "free cash flow", "operating cash flow",
     "cash flow from operating activities", "acquisitions"),
    ("current ratio", "quick ratio", "cash ratio", "inventory turnover ratio", "asset turnover ratio",
     "debt-to-equity ratio", "interest coverage ratio"),
    ("earnings per share", "dividend per share", "book value per share"),
)
SUBJECT_METRICS = (
    ("dividends", "stock options", "share repurchases", "restricted stock units", "stock-based compensation"),
    ("shares outstanding", "stock price", "market capitalization"),
    ("employees", "headcount", "customers", "subscribers", "active users"),
)
BUSINESS_SEGMENTS = (
    ("cloud", "software", "hardware", "manufacturing", "retail", "services", "consumer", "enterprise", "automotive",
     "healthcare", "advertising", "gaming", "data center", "wholesale", "logistics", "footwear", "apparel",
     "equipment", "commercial airplanes", "defense", "packaging", "pharmaceuticals", "insurance"),
)
# A business segment is a segment only next to one of these words ("the cloud segment", "gaming revenue").
SEGMENT_CUES = frozenset("segment segments business businesses division divisions unit units sales revenue revenues "
                         "market markets industry products".split())

# Roles of people, in families of the same standing: a role is swapped only for another of its family and of the
# same grammatical number ("the defendant" -> "the plaintiff", "which judges'" -> "which attorneys'").
ROLES = (
    ("plaintiff", "plaintiffs", "defendant", "defendants", "appellant", "appellants", "appellee", "appellees",
     "petitioner", "petitioners", "respondent", "respondents", "claimant", "claimants"),
    ("judge", "judges", "attorney", "attorneys", "prosecutor", "prosecutors", "clerk", "clerks"),  # not "magistrate":
    # a magistrate judge is a judge, and a page that names one may answer the question
    ("officer", "officers", "agent", "agents", "investigator", "investigators", "inspector", "inspectors",
     "detective", "detectives"),
    ("author", "authors", "editor", "editors", "reviewer", "reviewers", "contributor", "contributors"),
)
# Kinds of things a document is made of, counted or pointed at without a number ("How many figures ...", "Among all
# charts in this report"): a question about one kind is not answered by a page that only shows another. The kinds
# of a family exclude each other; near-synonyms are never swapped (a chart is a graph, a photo a picture, a step a
# stage, a slide a page: such a "negative" would ask the same question).
DOC_OBJECTS = (
    ("figure", "figures", "table", "tables"),
    ("photo", "photos", "chart", "charts", "map", "maps"),
    ("bar chart", "bar charts", "pie chart", "pie charts", "line chart", "line charts", "scatter plot",
     "scatter plots"),
    ("chapter", "chapters", "section", "sections", "appendix", "appendices"),
    ("row", "rows", "column", "columns"),
)
# Colours a question names (of a bar, a box, a line in a figure); "gray" is left out: it would swap with "grey".
COLORS = (("red", "green", "blue", "yellow", "orange", "purple", "black", "white", "grey", "brown", "pink"),)
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
# Words that refer to a part of a document by its number ("Table 2", "Fig. 5", "Section 3.4", "page 15"), and
# the kind each refers to: a reference is changed only to another of its kind that the corpus numbers.
REFERENCE_KINDS = {"table": "table", "figure": "figure", "fig": "figure", "fig.": "figure", "section": "section",
                   "chapter": "chapter", "appendix": "appendix", "page": "page", "exhibit": "exhibit", "note": "note",
                   "item": "item", "step": "step"}
