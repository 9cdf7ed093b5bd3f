// Messages of the retention part of the UI (merged into i18n.js's under the key "retention").
export default {
  'zh-CN': { retention: {} },
  en: { retention: {} },
}
