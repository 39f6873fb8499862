// The page: upload one picture or clip to /api/check, show the Verdict. Plain JS, no build step.
"use strict";

const TEXT = {
  "zh-TW": {
    tagline: "上傳一張有人臉的照片或短片，看看它是真實的人還是 AI（GAN）生成的臉。",
    drop: "把圖片或影片拖到這裡，或點一下選擇檔案",
    checking: "檢查中…",
    faces: "每一張臉",
    privacy: "圖片只在檢查時暫存幾分鐘，不會寫入硬碟，也不會記錄在日誌中。",
    labels: { fake: "很可能是 AI 生成的臉", real: "看起來是真實照片", unsure: "無法確定",
              no_face: "找不到人臉", unreadable: "無法讀取這張圖片", error: "這次無法完成檢查" },
    clipLabels: { real: "影片中的人臉看起來是真的", no_face: "影片中找不到人臉", unreadable: "無法讀取這段影片" },
    faceLabels: { fake: "AI 生成", real: "真實", unsure: "不確定" },
    prob: (p) => `AI 生成的機率：${p}%`,
    face: (i, l, p, s) => `第 ${i} 張臉：${l}（AI 生成機率 ${p}%，臉寬 ${s} 像素）`,
    cached: "（之前檢查過，直接取用結果）",
    frames: (n) => `（檢查了 ${n} 個畫面）`,
    model: (n, v, ms) => `模型 ${n} ${v}` + (ms ? `・耗時 ${ms} 毫秒` : ""),
    network: "無法連線到伺服器，請稍後再試。",
    stillWaiting: "還在排隊檢查中…",
    reasons: {
      face_too_small: "臉太小，難以判斷。",
      heavily_compressed: "圖片被壓縮得很嚴重；以「檔案」方式傳送可以保留更多細節。",
      not_an_image: "這不是圖片檔。",
      truncated: "圖片檔不完整或已損壞。",
      too_large_bytes: "檔案太大。",
      too_many_pixels: "圖片像素太多，無法安全處理。",
      animated_first_frame: "這是動畫，只檢查了第一格。",
      image_expired: "圖片在檢查前就過期了，請再傳一次。",
      worker_failed: "檢查多次失敗，請稍後再試。",
      several_faces: "有多張臉，每一張分別判斷。",
      clip_too_long: "影片太長了，請傳較短的片段。",
      too_many_frames: "影片的畫面數太多了。",
    },
  },
  en: {
    tagline: "Upload a picture or clip with a face: is it a real person or a GAN-generated face?",
    drop: "Drop a picture or clip here, or click to pick one",
    checking: "Checking…",
    faces: "Each face",
    privacy: "Images are kept only for the few minutes of the check, never written to disk, never logged.",
    labels: { fake: "Probably a GAN-generated face", real: "Looks like a real photo", unsure: "Unsure",
              no_face: "No face found", unreadable: "Could not read this image", error: "Could not check this time" },
    clipLabels: { real: "The faces in this clip look real", no_face: "No face found in this clip",
                  unreadable: "Could not read this clip" },
    faceLabels: { fake: "generated", real: "real", unsure: "unsure" },
    prob: (p) => `Probability it is generated: ${p}%`,
    face: (i, l, p, s) => `Face ${i}: ${l} (${p}% generated, ${s} px wide)`,
    cached: " (checked before: answered from the cache)",
    frames: (n) => ` (checked in ${n} frames)`,
    model: (n, v, ms) => `Model ${n} ${v}` + (ms ? ` · ${ms} ms` : ""),
    network: "Cannot reach the server; please try again later.",
    stillWaiting: "Still waiting in the queue…",
    reasons: {
      face_too_small: "The face is too small to judge.",
      heavily_compressed: "The image is heavily compressed; sending the picture as a file keeps more detail.",
      not_an_image: "This is not an image.",
      truncated: "The image file is incomplete or corrupt.",
      too_large_bytes: "The file is too large.",
      too_many_pixels: "The image has too many pixels to handle safely.",
      animated_first_frame: "It is animated: only the first frame was checked.",
      image_expired: "The image expired before it was checked; please send it again.",
      worker_failed: "The check failed several times; please try again later.",
      several_faces: "Several faces: each one is judged on its own.",
      clip_too_long: "The clip is too long; please send a shorter one.",
      too_many_frames: "The clip has too many frames.",
    },
  },
};

// zh-TW unless the person chose otherwise before, or their browser asks for English.
let lang = localStorage.getItem("lang") || ((navigator.language || "").toLowerCase().startsWith("en") ? "en" : "zh-TW");
let lastVerdict = null;
let lastWasClip = false; // the uploaded file was a video: an unreadable one has no frames to tell
const $ = (id) => document.getElementById(id);

function setLang(l) {
  lang = TEXT[l] ? l : "zh-TW";
  localStorage.setItem("lang", lang);
  document.documentElement.lang = lang === "en" ? "en" : "zh-Hant-TW";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = TEXT[lang][el.dataset.i18n]; });
  document.querySelectorAll(".lang button").forEach((b) => b.classList.toggle("active", b.dataset.lang === lang));
  if (lastVerdict) render(lastVerdict);
}

const pct = (p) => (p === null || p === undefined ? "?" : (p * 100).toFixed(1));

function render(v) {
  lastVerdict = v;
  const t = TEXT[lang];
  const label = $("verdict-label");
  label.textContent = ((v.frames || lastWasClip) && t.clipLabels[v.label]) || t.labels[v.label] || v.label;
  label.className = "verdict " + v.label;
  label.dataset.label = v.label;
  $("verdict-prob").textContent = (v.p_fake === null || v.p_fake === undefined ? "" : t.prob(pct(v.p_fake)))
    + (v.frames ? t.frames(v.frames) : "") + (v.cached && v.p_fake !== null && v.p_fake !== undefined ? t.cached : "");
  const reasons = $("reasons");
  reasons.replaceChildren(...(v.reasons || []).map((r) => { const li = document.createElement("li"); li.textContent = t.reasons[r] || r; return li; }));
  const faces = v.faces || [];
  $("faces-title").hidden = faces.length === 0;
  $("faces").replaceChildren(...faces.map((f, i) => {
    const li = document.createElement("li");
    li.className = "face " + f.label;
    li.textContent = t.face(i + 1, t.faceLabels[f.label] || f.label, pct(f.p_fake), f.size_px);
    return li;
  }));
  const img = $("marked");
  if (v.marked_image_key) {
    if (img.dataset.rid !== v.request_id) { img.src = "/api/marked/" + encodeURIComponent(v.request_id); img.dataset.rid = v.request_id; }
    img.hidden = false;
    img.onerror = () => { img.hidden = true; };
  } else { img.hidden = true; img.removeAttribute("src"); delete img.dataset.rid; }
  const m = v.model || {};
  const total = v.timings_ms && (v.timings_ms.total || v.timings_ms.total_ms);
  $("meta").textContent = m.name ? t.model(m.name, m.version || "", total ? Math.round(total) : 0) : "";
  $("result").hidden = false;
}

function showError(msg) { $("error").textContent = msg; $("error").hidden = false; }

async function poll(rid) {
  for (let i = 0; i < 150; i++) {
    await new Promise((r) => setTimeout(r, 2000));
    const res = await fetch(`/api/check/${rid}?lang=${lang}`);
    if (res.status === 200) return res.json();
    if (res.status !== 202) { const e = await res.json(); throw new Error(e.message); }
  }
  throw new Error(TEXT[lang].stillWaiting);
}

async function upload(file) {
  if (!file) return;
  $("error").hidden = true; $("result").hidden = true; $("busy").hidden = false; lastVerdict = null;
  lastWasClip = /^video\//.test(file.type || "");
  const form = new FormData();
  form.append("image", file, file.name || "image");
  try {
    const res = await fetch(`/api/check?lang=${lang}`, { method: "POST", body: form });
    const body = await res.json();
    if (res.status === 200) render(body);
    else if (res.status === 504 && body.request_id) render(await poll(body.request_id));
    else showError(body.message || res.statusText);
  } catch (err) {
    showError(err instanceof TypeError ? TEXT[lang].network : err.message);
  } finally {
    $("busy").hidden = true;
  }
}

$("file").addEventListener("change", (e) => upload(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files[0]); });
document.querySelectorAll(".lang button").forEach((b) => b.addEventListener("click", () => setLang(b.dataset.lang)));
setLang(lang);
