// ESLint over the front end's own scripts, static/*.js (static/vendor/ is
// third-party and left alone): the recommended rules and the browser's globals.
// .ci/run runs it from the repository root, whose paths the patterns below use:
//   tests/js/node_modules/.bin/eslint --config tests/js/eslint.config.js static
import js from '@eslint/js';
import globals from 'globals';

export default [
  { ignores: ['static/vendor/**'] },
  {
    files: ['static/*.js'],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: 'latest',
      // The pages load them with <script type="module"> or import them...
      sourceType: 'module',
      globals: { ...globals.browser },
    },
  },
  {
    // ...except docs.js, a classic deferred script beside Swagger UI's bundle.
    files: ['static/docs.js'],
    languageOptions: { sourceType: 'script' },
  },
];
