"""Dataset loaders: tiny fixtures in each dataset's real file format -> exact raw rows."""
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.loaders import LOADERS, load_dataset
from pipeline.preprocess_config import PreprocessConfig

REPO = Path(__file__).resolve().parents[2]
LIKEHATE_DIR = REPO.parent / "shared" / "data" / "kuairand-likehate"


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_bytes(text.encode(encoding))


def _read(out: Path) -> pd.DataFrame:
    return pd.read_parquet(sorted(out.glob("part-*.parquet")))


def _row(df: pd.DataFrame, **where) -> dict:
    mask = np.ones(len(df), dtype=bool)
    for col, value in where.items():
        mask &= (df[col] == value).to_numpy()
    assert mask.sum() == 1, f"expected one row with {where}, found {mask.sum()}"
    return df[mask].iloc[0].to_dict()


# ---- MovieLens ---------------------------------------------------------------------------------
def _ml1m(src: Path) -> None:
    _write(src / "ratings.dat", "\n".join([
        "1::1193::5::978300760", "1::661::3::978302109", "1::914::4::978301968",
        "2::1193::1::978298413", "2::2355::4::978824291", "2::661::2::978299000",
        "3::914::5::978297867", "3::2355::3::978298709", "3::1193::4::978297000",
        "1::2355::2::978300000", "2::914::5::978299500", "3::661::4::978298000"]) + "\n")
    _write(src / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    _write(src / "movies.dat", "\n".join([
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
        "914::My Fair Lady (1964)::Musical|Romance",
        "2355::Misérables, Les (1998)::Drama"]) + "\n", encoding="latin-1")


def test_ml1m_joins_users_movies_latin1_and_shards(tmp_path):
    src, out = tmp_path / "ml-1m", tmp_path / "raw"
    src.mkdir()
    _ml1m(src)
    summary = load_dataset("ml1m", str(src), str(out), shard_rows=5, chunk_rows=4)
    assert summary["rows"] == 12
    assert [Path(f).name for f in summary["files"]] == ["part-00000.parquet", "part-00001.parquet",
                                                       "part-00002.parquet"]
    assert [pq.read_metadata(f).num_rows for f in summary["files"]] == [5, 5, 2]
    df = _read(out)
    assert list(df.columns) == summary["columns"] == LOADERS["ml1m"].schema.names
    # row order is the file's order across chunks and shards
    assert df["timestamp"].tolist()[:3] == [978300760, 978302109, 978301968]
    assert df["click"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1]  # rating >= 4
    r = _row(df, user_id=2, movie_id=661)
    assert (r["rating"], r["click"], r["timestamp"]) == (2, 0, 978299000)
    assert (r["gender"], r["age"], r["occupation"], r["zip_code"]) == ("M", 56, "16", "70072")
    assert r["title"] == "James and the Giant Peach (1996)" and r["year"] == 1996
    assert list(r["genres"]) == ["Animation", "Children's", "Musical"]
    r = _row(df, user_id=3, movie_id=2355)
    assert r["title"] == "Misérables, Les (1998)" and list(r["genres"]) == ["Drama"]
    assert pq.read_schema(summary["files"][0]).field("genres").type == pa.list_(pa.string())


def test_ml1m_click_threshold_option_and_unknown_option(tmp_path):
    src = tmp_path / "ml-1m"
    src.mkdir()
    _ml1m(src)
    load_dataset("ml1m", str(src), str(tmp_path / "o"), click_threshold=5)
    assert _read(tmp_path / "o")["click"].sum() == 3  # the three 5-star ratings
    with pytest.raises(ValueError, match="click_treshold.*known"):
        load_dataset("ml1m", str(src), str(tmp_path / "o"), click_treshold=5)


def test_ml1m_malformed_line_names_file_and_line(tmp_path):
    src = tmp_path / "ml-1m"
    src.mkdir()
    _ml1m(src)
    _write(src / "ratings.dat", "1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(ValueError, match=r"ratings\.dat:2"):
        load_dataset("ml1m", str(src), str(tmp_path / "o"))


def test_ml100k_genre_flags_and_user_table(tmp_path):
    src, out = tmp_path / "ml-100k", tmp_path / "raw"
    src.mkdir()
    _write(src / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
                           "196\t377\t4\t881251000\n22\t267\t5\t878887200\n")
    _write(src / "u.user", "22|25|M|writer|40206\n186|39|F|executive|00000\n196|49|M|writer|55105\n")
    flags = {242: [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # Comedy
             302: [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0],   # Crime Film-Noir Mystery Thriller
             377: [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # Children's Comedy
             267: [1] + [0] * 18}                                              # unknown
    titles = {242: "Kolya (1996)", 302: "L.A. Confidential (1997)", 377: "Heavyweights (1994)", 267: "unknown"}
    lines = [f"{i}|{titles[i]}|{'' if i == 267 else '24-Jan-1997'}||http://x|" + "|".join(map(str, f))
             for i, f in flags.items()]
    lines.append("1201|Marlene Dietrich: Shadow and Light (1996) |02-Apr-1996||http://y|"
                 + "|".join(["0"] * 8 + ["1"] + ["0"] * 10))
    lines.append("1300|Ménage (Tenue de soirée) (1986)|01-Jan-1986||http://z|"
                 + "|".join(["0"] * 5 + ["1"] + ["0"] * 13))
    _write(src / "u.item", "\n".join(lines) + "\n", encoding="latin-1")
    summary = load_dataset("ml100k", str(src), str(out))
    df = _read(out)
    assert summary["rows"] == 5 and df["click"].tolist() == [0, 0, 0, 1, 1]
    r = _row(df, user_id=186, movie_id=302)
    assert (r["age"], r["gender"], r["occupation"], r["zip_code"]) == (39, "F", "executive", "00000")
    assert list(r["genres"]) == ["Crime", "Film-Noir", "Mystery", "Thriller"] and r["year"] == 1997
    r = _row(df, user_id=196, movie_id=377)
    assert list(r["genres"]) == ["Children's", "Comedy"] and r["timestamp"] == 881251000
    r = _row(df, user_id=22, movie_id=267)
    assert r["title"] == "unknown" and pd.isna(r["year"]) and list(r["genres"]) == ["unknown"]


# ---- Criteo ---------------------------------------------------------------------------------------
def _criteo_line(label, ints, cats):
    return "\t".join([str(label), *[("" if v is None else str(v)) for v in ints],
                      *[("" if v is None else v) for v in cats]])


def test_criteo_empty_fields_negative_ints_and_row_id(tmp_path):
    src, out = tmp_path / "criteo", tmp_path / "raw"
    src.mkdir()
    cats = [f"{i:08x}" for i in range(26)]
    lines = [
        _criteo_line(0, [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, None, 2],
                     ["68fd1e64", "80e26c9b", "fb936136", "7b4723c4", "25c83c98", "7e0ccccf", "de7995b8",
                      "1f89b562", "a73ee510", "a8cd5504", "b2cb9c98", "37c9c164", "2824a5f6", "1adce6ef",
                      "8ba8b39a", "891b62e7", "e5ba7672", "f54016b9", "21ddcdc9", "b1252a9d", "07b5194c",
                      None, "3a171ecb", "c5c50484", "e8b83407", "9727dd16"]),
        _criteo_line(1, [None, -1, None, None, 0, None, 0, 0, 0, None, 0, None, None],
                     [None] * 26),
    ]
    lines += [_criteo_line(i % 2, [i, -3, 0, i * 1000, None, 1, 1, 1, 1, 1, 1, 1, 1], cats) for i in range(10)]
    _write(src / "train.txt", "\n".join(lines) + "\n")
    summary = load_dataset("criteo", str(src), str(out), chunk_rows=5)
    df = _read(out)
    assert summary["rows"] == 12 and df["row_id"].tolist() == list(range(12))
    assert df["click"].tolist() == [0, 1] + [i % 2 for i in range(10)]
    first = df.iloc[0]
    assert first["I5"] == 1382 and pd.isna(first["I12"]) and first["C1"] == "68fd1e64"
    assert pd.isna(first["C22"]) and first["C26"] == "9727dd16"
    second = df.iloc[1]
    assert second["I2"] == -1 and pd.isna(second["I1"]) and second["I5"] == 0
    assert second[[f"C{i}" for i in range(1, 27)]].isna().all()
    assert df["I2"].tolist()[2:] == [-3] * 10 and df["I4"].iloc[11] == 9000
    schema = pq.read_schema(summary["files"][0])
    assert schema.field("I1").type == pa.int64() and schema.field("C1").type == pa.string()


def test_criteo_bad_label_and_extra_field_name_the_line(tmp_path):
    src = tmp_path / "criteo"
    src.mkdir()
    good = _criteo_line(0, [1] * 13, ["a"] * 26)
    _write(src / "train.txt", "\n".join([good, good, good.replace("0", "2", 1)]) + "\n")
    with pytest.raises(ValueError, match=r"train\.txt:3: column 'click' must be 0 or 1"):
        load_dataset("criteo", str(src), str(tmp_path / "o"))
    # a too-long line that starts a chunk (pandas would truncate it silently)
    _write(src / "train.txt", "\n".join([good, good, good + "\textra", good]) + "\n")
    with pytest.raises(ValueError, match=r"train\.txt:3: more than the 40 expected fields"):
        load_dataset("criteo", str(src), str(tmp_path / "o"), chunk_rows=2)


# ---- Frappe -------------------------------------------------------------------------------------
FRAPPE_LINES = {
    "train": ["-1 451:1 4149:1 5041:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5149:1",
              "1 0:1 957:1 5039:1 5047:1 5054:1 5056:1 5059:1 5061:1 5070:1 5150:1",
              "-1 956:1 5038:1 5045:1 5052:1 5053:1 5057:1 5058:1 5068:1 5148:1 5381:1 "],
    "validation": ["1 10:1 1000:1 5040:1 5048:1 5053:1 5055:1 5058:1 5062:1 5071:1 5151:1"],
    "test": ["-1 11:1 1001:1 5042:1 5049:1 5054:1 5057:1 5059:1 5063:1 5072:1 5152:1",
             "1 12:1 1002:1 5043:1 5050:1 5053:1 5055:1 5058:1 5064:1 5073:1 5153:1"],
}


def _frappe(src: Path) -> None:
    for part, lines in FRAPPE_LINES.items():
        _write(src / f"frappe.{part}.libfm", "\n".join(lines) + "\n")


def test_frappe_labels_fields_and_split(tmp_path):
    src, out = tmp_path / "frappe", tmp_path / "raw"
    src.mkdir()
    _frappe(src)
    load_dataset("frappe", str(src), str(out))
    df = _read(out)
    assert df["click"].tolist() == [0, 1, 0, 1, 0, 1]  # -1 -> 0
    assert df["split"].tolist() == ["train"] * 3 + ["valid"] + ["test"] * 2
    assert df.iloc[0][["user_id", "item_id", "daytime", "weekday", "isweekend", "homework", "cost",
                       "weather", "country", "city"]].tolist() == [451, 4149, 5041, 5046, 5053, 5055, 5058,
                                                                   5060, 5069, 5149]
    assert df.iloc[2]["city"] == 5381 and df.iloc[2]["user_id"] == 956  # trailing space tolerated


def test_frappe_rejects_unordered_tokens_and_bad_labels(tmp_path):
    src = tmp_path / "frappe"
    src.mkdir()
    _frappe(src)
    _write(src / "frappe.test.libfm", FRAPPE_LINES["test"][0] + "\n1 4149:1 451:1 5041:1 5046:1 5053:1 5055:1 "
                                                               "5058:1 5060:1 5069:1 5149:1\n")
    with pytest.raises(ValueError, match=r"frappe\.test\.libfm:2: feature indexes must increase"):
        load_dataset("frappe", str(src), str(tmp_path / "o"))
    _write(src / "frappe.test.libfm", "0 " + FRAPPE_LINES["test"][0][3:] + "\n")
    with pytest.raises(ValueError, match=r"frappe\.test\.libfm:1: label must be 1 or -1"):
        load_dataset("frappe", str(src), str(tmp_path / "o"))
    _write(src / "frappe.test.libfm", "1 451:1 4149:1 5041:1\n")
    with pytest.raises(ValueError, match=r"frappe\.test\.libfm:1: 3 features, expected 10"):
        load_dataset("frappe", str(src), str(tmp_path / "o"))


# ---- Taobao --------------------------------------------------------------------------------------
def test_taobao_joins_profile_and_ads_with_nulls(tmp_path):
    src, out = tmp_path / "taobao", tmp_path / "raw"
    src.mkdir()
    _write(src / "raw_sample.csv", "user,time_stamp,adgroup_id,pid,nonclk,clk\n"
                                   "581738,1494137644,1,430548_1007,1,0\n"
                                   "449818,1494638778,3,430548_1007,1,0\n"
                                   "914836,1494650879,4,430548_1007,0,1\n"
                                   "914836,1494651029,5,430539_1007,1,0\n"
                                   "999999,1494218579,1,430539_1007,0,1\n")
    _write(src / "user_profile.csv", "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,"
                                     "shopping_level,occupation,new_user_class_level \n"
                                     "581738,0,1,2,1,,3,0,\n"
                                     "449818,0,3,2,3,2,3,0,3\n"
                                     "914836,8,4,2,4,,2,0,\n")
    _write(src / "ad_feature.csv", "adgroup_id,cate_id,campaign_id,customer,brand,price\n"
                                   "1,6406,83237,1,95471,170.0\n"
                                   "3,1665,167335,8,NULL,0.01\n"
                                   "4,6406,9664,9,248,5.0\n"
                                   "5,1665,167335,8,NULL,118.0\n")
    load_dataset("taobao", str(src), str(out), chunk_rows=2)
    df = _read(out)
    assert df["click"].tolist() == [0, 0, 1, 0, 1]
    r = _row(df, user_id=914836, adgroup_id=4)
    assert (r["timestamp"], r["pid"], r["cms_segid"], r["age_level"], r["cate_id"], r["brand"]) == \
        (1494650879, "430548_1007", 8, 4, 6406, 248)
    assert pd.isna(r["pvalue_level"]) and pd.isna(r["new_user_class_level"])
    r = _row(df, user_id=449818)
    assert r["new_user_class_level"] == 3 and pd.isna(r["brand"]) and r["price"] == pytest.approx(0.01)
    r = _row(df, user_id=999999)  # no profile: nulls, ad columns still joined
    assert pd.isna(r["cms_segid"]) and pd.isna(r["final_gender_code"]) and r["customer"] == 1
    assert pq.read_schema(sorted(out.glob("part-*"))[0]).field("price").type == pa.float32()


def test_taobao_inconsistent_clk_nonclk_and_header(tmp_path):
    src = tmp_path / "taobao"
    src.mkdir()
    _write(src / "user_profile.csv", "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,"
                                     "shopping_level,occupation,new_user_class_level\n1,0,1,2,1,1,3,0,2\n")
    _write(src / "ad_feature.csv", "adgroup_id,cate_id,campaign_id,customer,brand,price\n1,2,3,4,5,6.0\n")
    _write(src / "raw_sample.csv", "user,time_stamp,adgroup_id,pid,nonclk,clk\n1,1494137644,1,p,1,0\n"
                                   "1,1494137645,1,p,1,1\n")
    with pytest.raises(ValueError, match=r"raw_sample\.csv:3: exactly one of clk and nonclk"):
        load_dataset("taobao", str(src), str(tmp_path / "o"))
    _write(src / "raw_sample.csv", "user,time_stamp,adgroup_id,pid,clk\n1,1494137644,1,p,0\n")
    with pytest.raises(ValueError, match=r"header lacks column\(s\) \['nonclk'\]"):
        load_dataset("taobao", str(src), str(tmp_path / "o"))


# ---- KuaiRand ------------------------------------------------------------------------------------
USER_HEADER = ("user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,"
               "follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,"
               "register_days,register_days_range," + ",".join(f"onehot_feat{i}" for i in range(18)))
USER_ROWS = ['0,full_active,0,1,1,514,500+,150,"[100,1k)",34,"[30,60)",799,730+,1,1,29,949,1.0,0,0,14,135,6,3,0,'
             '0.0,1.0,0.0,0.0,0.0,0.0',
             '1,full_active,0,-124,1,457,"(250,500]",20,"[10,100)",3,"[1,5)",1474,730+,1,3,2,1160,,0,0,31,283,6,2,'
             '2,,,,,,']
LOG_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
              "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,"
              "tab")


def _kuairand(src: Path) -> None:
    _write(src / "user_features_27k.csv", "\n".join([USER_HEADER, *USER_ROWS]) + "\n")
    _write(src / "log_standard_4_08_to_4_21_27k_part1.csv", "\n".join([
        LOG_HEADER,
        "0,3149,20220408,1000,1649383870404,1,1,0,0,0,0,1,46080,12000,0,0,0,0,1",
        "1,9,20220408,1100,1649387000123,0,0,0,0,0,1,0,1500,30000,0,0,0,0,0",
        "0,77,20220409,2300,1649515000999,1,0,1,1,1,0,0,8000,60000,1200,3400,1,0,4"]) + "\n")
    _write(src / "log_standard_4_08_to_4_21_27k_part2.csv", "\n".join([
        LOG_HEADER, "5,3149,20220420,0,1650384000000,1,0,0,0,0,0,1,13000,12000,0,0,0,0,1"]) + "\n")
    _write(src / "log_random_4_22_to_5_08_27k.csv", "\n".join([
        LOG_HEADER, "1,555,20220423,1200,1650686400000,0,0,0,0,0,0,0,900,20000,0,0,0,1,1"]) + "\n")


def test_kuairand_tasks_time_and_user_features(tmp_path):
    src, out = tmp_path / "kuairand", tmp_path / "raw"
    src.mkdir()
    _kuairand(src)
    summary = load_dataset("kuairand", str(src), str(out), chunk_rows=2)
    df = _read(out)
    assert summary["rows"] == 4 and df["user_id"].tolist() == [0, 1, 0, 5]  # part1 then part2
    r = df.iloc[2]
    assert (r["click"], r["like"], r["follow"], r["comment"], r["forward"], r["hate"], r["long_view"],
            r["profile_enter"]) == (1, 0, 1, 1, 1, 0, 0, 1)
    assert (r["timestamp"], r["time_ms"], r["date"], r["hour"], r["tab"], r["duration_ms"]) == \
        (1649515000, 1649515000999, 20220409, 23, 4, 60000)
    assert df["hate"].tolist() == [0, 1, 0, 0] and df["like"].tolist() == [1, 0, 0, 0]
    r = df.iloc[1]
    assert (r["is_live_streamer"], r["follow_user_num_range"], r["register_days"], r["onehot_feat3"]) == \
        (-124, "(250,500]", 1474, 1160)
    assert pd.isna(r["onehot_feat4"]) and pd.isna(r["onehot_feat17"])
    assert df.iloc[0]["onehot_feat4"] == 1 and df.iloc[0]["fans_user_num_range"] == "[100,1k)"
    assert pd.isna(df.iloc[3]["user_active_degree"])  # user 5 has no feature row
    load_dataset("kuairand", str(src), str(tmp_path / "rand"), log="random")
    rand = _read(tmp_path / "rand")
    assert rand["video_id"].tolist() == [555] and rand["is_rand"].tolist() == [1]


def test_kuairand_likehate_format(tmp_path):
    src, out = tmp_path / "lh", tmp_path / "raw"
    src.mkdir()
    _write(src / "user_features_pure.csv", "\n".join([USER_HEADER, *USER_ROWS]) + "\n")
    _write(src / "processed_standard_kcore_15.tsv", "\n".join([
        "user_id\tvideo_id\tdate\thourmin\ttime_ms\tis_click\tis_follow\tis_comment\tis_forward\tlong_view\t"
        "play_time_ms\tduration_ms\tcomment_stay_time\tis_profile_enter\tlabel\ttimestamp",
        "1\t3892024\t20220410\t1700\t1649581149287\t1\t0\t0\t0\t1\t46186\t45916\t7639\t0\t1\t2022-04-10 08:59:09",
        "0\t2629583\t20220411\t1600\t1649664552983\t1\t0\t1\t0\t0\t14549\t0\t5045\t0\t0\t2022-04-11 08:09:12",
    ]) + "\n")
    load_dataset("kuairand_likehate", str(src), str(out))
    df = _read(out)
    assert df["like"].tolist() == [1, 0] and df["click"].tolist() == [1, 1] and df["comment"].tolist() == [0, 1]
    assert df["long_view"].tolist() == [1, 0] and df["timestamp"].tolist() == [1649581149, 1649664552]
    assert df["hour"].tolist() == [17, 16] and df["user_active_degree"].tolist() == ["full_active"] * 2
    assert "hate" not in df.columns and "tab" not in df.columns


# ---- shared behaviour ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_missing_file_names_it_and_the_download_page(tmp_path, name):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset(name, str(tmp_path), str(out))
    msg = str(exc.value)
    assert "http" in msg and LOADERS[name].page.split()[0] in msg and str(tmp_path) in msg
    assert not out.exists()  # nothing written


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'avazu'"):
        load_dataset("avazu", ".", ".")


def test_rerun_replaces_shards_and_failed_run_keeps_previous(tmp_path):
    src, out = tmp_path / "ml-1m", tmp_path / "raw"
    src.mkdir()
    _ml1m(src)
    load_dataset("ml1m", str(src), str(out), shard_rows=2)
    assert len(list(out.glob("part-*.parquet"))) == 6
    load_dataset("ml1m", str(src), str(out), shard_rows=5)
    assert sorted(p.name for p in out.iterdir()) == [".ctrflow-output.json"] + [f"part-0000{i}.parquet"
                                                                                for i in range(3)]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lines = (src / "ratings.dat").read_text().splitlines()
    _write(src / "ratings.dat", "\n".join(lines[:10] + ["1::661::x::978302109"] + lines[10:]) + "\n")
    with pytest.raises(ValueError, match=r"ratings\.dat"):
        load_dataset("ml1m", str(src), str(out), shard_rows=2, chunk_rows=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial or temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m", "raw"]  # no temp folder left beside it


# ---- configs name the loaders' columns exactly -----------------------------------------------------
_RAW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float32": pa.float32()}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_preprocess_config_matches_loader_columns(name):
    from features.encoders import analyzers_needed

    cfg = load_config(PreprocessConfig, str(REPO / "configs" / f"preprocess_{name}.yaml"))
    schema = LOADERS[name].schema
    assert cfg.input.format == "parquet" and cfg.input.path == f"raw/{name}/part-*.parquet"
    for spec in cfg.feature_specs():
        analyzers_needed(spec)  # the encoders accept the type, options, kind and dtype
        column = spec.source or spec.name
        assert column in schema.names, f"{name}: feature '{column}' is not a loader column"
        expected = _RAW_TYPES[spec.dtype]
        if spec.kind == "sequence":
            expected = pa.list_(expected)
        assert schema.field(column).type == expected, f"{name}: '{column}' type"
    for column in [*cfg.labels, *cfg.extra_meta, cfg.user_column, cfg.split.time_column, cfg.split.given_column]:
        assert column is None or column in schema.names, f"{name}: '{column}' is not a loader column"
    for label in cfg.labels:
        assert schema.field(label).type == pa.int64()
    assert (cfg.user_column is None) == (name == "criteo")


# ---- the real KuaiRand like/hate slice --------------------------------------------------------------
@pytest.mark.real_data
def test_real_kuairand_likehate_slice(tmp_path):
    if not LIKEHATE_DIR.is_dir():
        pytest.skip(f"real data folder {LIKEHATE_DIR} is absent")
    summary = load_dataset("kuairand_likehate", str(LIKEHATE_DIR), str(tmp_path / "raw"), shard_rows=20_000)
    assert summary["rows"] == 41_828 and len(summary["files"]) == 3
    df = _read(tmp_path / "raw")
    assert (df["like"] == 1).sum() == 33_745 and (df["like"] == 0).sum() == 8_083
    assert df["user_id"].nunique() == 664 and df["video_id"].nunique() == 9_359
    assert df["user_active_degree"].notna().all()  # every user joins with the feature table
    first = df.iloc[0]
    assert (first["user_id"], first["video_id"], first["timestamp"], first["hour"], first["click"],
            first["long_view"]) == (111, 3892024, 1649581149, 17, 1, 1)
    assert df["date"].between(20220408, 20220421).all() and (df["timestamp"] == df["time_ms"] // 1000).all()
