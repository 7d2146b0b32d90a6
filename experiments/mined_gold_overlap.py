import json, sys, glob, os, collections
sys.path.insert(0, "lib")
import pyarrow.dataset as d
from docrerank.core.schema import doc_id_of, doc_of_page
root = "/work/shared/data/qa_dev"
docs = {}
for f in glob.glob(root + "/pdfs/*.pdf"):
    docs[doc_id_of(open(f, "rb").read())] = "pdfs/" + os.path.basename(f)
gold = collections.defaultdict(set)
for line in open(root + "/queries.jsonl"):
    q = json.loads(line)
    gold[(q["query"].strip(), q["pdf"])] |= set(q["relevant_pages"])
def pno(pid): return int(pid.rsplit("-p", 1)[1])
for seed in (0, 1):
    t = d.dataset(f"/tmp/i23/tw{seed}/build/mined").to_table(columns=["group_id", "query", "page_id", "kind"]).to_pylist()
    groups = collections.defaultdict(list)
    for r in t: groups[r["group_id"]].append(r)
    off = collections.Counter(); fn = 0; neg = 0; same_doc = 0; nq = 0; unk = 0
    for g in groups.values():
        pos = [r for r in g if r["kind"] == "positive"][0]
        key = (pos["query"].strip(), docs.get(doc_of_page(pos["page_id"])))
        if key not in gold: unk += 1; continue
        nq += 1
        off['pos_gold'] += (pno(pos['page_id']) - 1) in gold[key]
        for r in g:
            if r["kind"] != "positive":
                neg += 1
                same = docs.get(doc_of_page(r["page_id"])) == key[1]
                same_doc += same
                fn += same and (pno(r['page_id']) - 1) in gold[key]
    print(f"seed {seed}: groups {len(groups)} matched {nq} unmatched {unk}; page-number offset hits {dict(off)}; mined negatives {neg}, same document {same_doc}, gold pages (false negatives) {fn} = {100*fn/neg:.1f}%")
